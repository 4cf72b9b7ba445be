#!/usr/bin/env bash
# Issue 12, item 1: the fit's sums and the candidate contraction on the model's device
# (`--compute-on device`) against the host path (`--compute-on host`), same model, corpus and
# queries, in one run. On the CPU the "device" is burn-flex on the same cores, so this measures
# what the burn-op path costs where faer's kernels are available; on a GPU run it with
# DEVICE=cuda (a build with --features tda-cli/cuda).
#
#   bash benches/device_path/run.sh [WORK_DIR]         # ≈ 10 min on 2 cores
#
# Prints per stage (s): fit covariance / Λ pass, their model and accumulation parts, trace model
# and contraction parts, and the device ÷ host ratios; the top-10 of both traces must agree.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/tda-device-path}"
device="${DEVICE:-cpu}"
cargo build --release -q --workspace --bin tda  # --workspace: the feature set of the tests, target/ reused
cargo build --release -q --workspace --example vocab_model
tda=target/release/tda
rm -rf "$work" && mkdir -p "$work"
# Qwen2-shaped, hidden 256, 4 blocks (MLP 1389), vocabulary 2,048; 240 documents of ~190 tokens.
target/release/examples/vocab_model "$work/m" 256 4 240 3 2048
for on in host device; do
  "$tda" fit --model "$work/m/model" --corpus "$work/m/corpus.jsonl" --out "$work/f_$on" \
    --device "$device" --compute-on "$on" --batch-size 16 --json > "$work/fit_$on.json"
  "$tda" trace --model "$work/m/model" --factors "$work/f_host" --corpus "$work/m/corpus.jsonl" \
    --queries "$work/m/queries.jsonl" --device "$device" --compute-on "$on" --batch-size 16 \
    --top-k 10 --json > "$work/trace_$on.json"
done
# Mixed precision (item 6): the device contraction with bf16 operands, every document ranked.
for prec in f32 bf16; do
  "$tda" trace --model "$work/m/model" --factors "$work/f_host" --corpus "$work/m/corpus.jsonl" \
    --queries "$work/m/queries.jsonl" --device "$device" --compute-on device --precision "$prec" \
    --batch-size 16 --top-k all --json > "$work/trace_all_$prec.json"
done
# Weights as stored (item 5): the model itself in bf16 (`--dtype bf16`; taps, sums and scores f32).
"$tda" trace --model "$work/m/model" --factors "$work/f_host" --corpus "$work/m/corpus.jsonl" \
  --queries "$work/m/queries.jsonl" --device "$device" --compute-on device --dtype bf16 \
  --batch-size 16 --top-k all --json > "$work/trace_all_model_bf16.json"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
fit = {on: json.load(open(f"{w}/fit_{on}.json")) for on in ("host", "device")}
tr = {on: json.load(open(f"{w}/trace_{on}.json"))["report"] for on in ("host", "device")}
rows = [("fit: covariance pass", "covariance_pass_s", fit), ("fit: Λ pass", "lambda_pass_s", fit),
        ("fit: model forward+backward", "model_s", fit), ("fit: copies", "copy_s", fit),
        ("fit: accumulation", "accumulate_s", fit), ("fit total", "total_s", fit),
        ("trace: model forward+backward", "model_s", tr), ("trace: copies", "copy_s", tr),
        ("trace: contraction", "contraction_s", tr), ("trace total", "total_s", tr)]
print("| stage (s) | host | device | device ÷ host |")
print("| --- | ---: | ---: | ---: |")
for name, key, src in rows:
    h, d = src["host"].get(key, 0.0), src["device"].get(key, 0.0)
    print(f"| {name} | {h:.2f} | {d:.2f} | {d / h if h else float('nan'):.2f} |")
ranks = {on: [[(r["doc_id"], round(r["score"], 3)) for r in q["results"]]
              for q in json.load(open(f"{w}/trace_{on}.json"))["queries"]] for on in ("host", "device")}
same = sum(a[0] == b[0] for qa, qb in zip(ranks["host"], ranks["device"]) for a, b in zip(qa, qb))
total = sum(len(q) for q in ranks["host"])
print(f"\ntop-10 documents equal in {same} of {total} ranks")
def spearman(x, y):
    def rank(v):
        r = [0] * len(v)
        for k, i in enumerate(sorted(range(len(v)), key=lambda i: v[i])):
            r[i] = k
        return r
    rx, ry, m = rank(x), rank(y), (len(x) - 1) / 2
    return sum((a - m) * (b - m) for a, b in zip(rx, ry)) / sum((a - m) ** 2 for a in rx)
runs = {p: json.load(open(f"{w}/trace_all_{p}.json")) for p in ("f32", "bf16", "model_bf16")}
for p, what in (("bf16", "--precision bf16 (contraction)"), ("model_bf16", "--dtype bf16 (model)")):
    rhos, errs = [], []
    for qf, qb in zip(runs["f32"]["queries"], runs[p]["queries"]):
        f = {r["doc_id"]: r["score"] for r in qf["results"]}
        b = {r["doc_id"]: r["score"] for r in qb["results"]}
        keys = sorted(f)
        rhos.append(spearman([f[k] for k in keys], [b[k] for k in keys]))
        scale = max(abs(v) for v in f.values())
        errs.append(max(abs(f[k] - b[k]) for k in keys) / scale)
    print(f"{what} vs f32 over {len(keys)} documents: Spearman min {min(rhos):.4f} mean "
          f"{sum(rhos)/len(rhos):.4f}; largest difference {max(errs):.1e} of the largest score; "
          f"trace total f32 {runs['f32']['report']['total_s']:.1f} s, {p} {runs[p]['report']['total_s']:.1f} s")
PY
