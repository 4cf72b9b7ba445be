#!/usr/bin/env bash
# Issue 12: `tda fit` + `tda trace` with default flags on a Qwen2-shaped model with the real
# 151,936-entry vocabulary (random init, tied embeddings), peak RSS per command (GNU time), and
# the peak RSS of `trace` on a 10× larger corpus with the same --top-k.
#
#   bash benches/real_vocab/run.sh [WORK_DIR]        # ≈ 35 min on 2 cores
#
# Default flags means: blocks tracked (no lm_head), windows of min(max_positions, 2048) tokens,
# batches of 8 windows, the default memory budget (a quarter of this machine's memory). The
# documents are ~1,000 tokens, so one batch of 8 would hold ≈ 20 GB of logits and their
# gradients at this vocabulary: the budget makes it fewer windows per forward.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/tda-real-vocab}"
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release -q --workspace --bin tda  # --workspace: the feature set of the tests, target/ reused
cargo build --release -q --workspace --example vocab_model
gen=target/release/examples/vocab_model
tda=target/release/tda
rm -rf "$work" && mkdir -p "$work"
# The real shape's width (hidden 896, MLP 4864, 14 heads, 2 KV heads), two blocks, 6 documents.
"$gen" "$work/big" 896 2 6 40
# The 10× check on a narrower model (hidden 128) with the same vocabulary: 40 vs 400 documents.
"$gen" "$work/x1" 128 2 40 3
"$gen" "$work/x10" 128 2 400 3
rss() { grep "Maximum resident set size" "$1" | awk '{printf "%.2f", $6 / 1048576}'; }
wall() { grep "Elapsed (wall clock)" "$1" | awk '{print $8}'; }
run() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" > "$work/$name.json" 2> "$work/$name.time" || { cat "$work/$name.time"; exit 1; }
  echo "$name: peak RSS $(rss "$work/$name.time") GiB, wall $(wall "$work/$name.time")"
}
run fit "$tda" fit --model "$work/big/model" --corpus "$work/big/corpus.jsonl" --out "$work/big/factors" --json
run trace "$tda" trace --model "$work/big/model" --factors "$work/big/factors" \
  --corpus "$work/big/corpus.jsonl" --queries "$work/big/queries.jsonl" --json
"$tda" fit --model "$work/x1/model" --corpus "$work/x1/corpus.jsonl" --out "$work/x1/factors" --json > /dev/null
run trace_1x "$tda" trace --model "$work/x1/model" --factors "$work/x1/factors" \
  --corpus "$work/x1/corpus.jsonl" --queries "$work/x1/queries.jsonl" --top-k 10 --json
# The same model and factors: only the corpus is 10× larger.
run trace_10x "$tda" trace --model "$work/x1/model" --factors "$work/x1/factors" \
  --corpus "$work/x10/corpus.jsonl" --queries "$work/x1/queries.jsonl" --top-k 10 --json
# The same two corpora cut into windows of one length (--max-len 128 < every document), so both
# runs have the same batch shapes: the 10× corpus's longest document is 210 tokens against 165,
# and the default-window runs above peak with their longest batch, not with the corpus size.
run trace_1x_w128 "$tda" trace --model "$work/x1/model" --factors "$work/x1/factors" \
  --corpus "$work/x1/corpus.jsonl" --queries "$work/x1/queries.jsonl" --top-k 10 --max-len 128 --json
run trace_10x_w128 "$tda" trace --model "$work/x1/model" --factors "$work/x1/factors" \
  --corpus "$work/x10/corpus.jsonl" --queries "$work/x1/queries.jsonl" --top-k 10 --max-len 128 --json
python3 - "$work" <<'PY'
import json, re, sys
w = sys.argv[1]
def rss(n):
    t = open(f"{w}/{n}.time").read()
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 2**20
fit = json.load(open(f"{w}/fit.json"))
trace = json.load(open(f"{w}/trace.json"))
r = trace["report"]
print(json.dumps({
    "fit": {"peak_rss_gib": round(rss("fit"), 2), "layers": len(fit["layers"]),
            "window_len": fit["corpus"]["window_len"], "windows": fit["windows"],
            "model_passes": fit.get("model_passes"), "total_s": round(fit["total_s"], 1)},
    "trace": {"peak_rss_gib": round(rss("trace"), 2), "candidates": r["candidates"],
              "model_passes": r.get("model_passes"), "total_s": round(r["total_s"], 1)},
    "trace_10x_over_1x_rss": round(rss("trace_10x") / rss("trace_1x"), 3),
    "trace_1x_rss_gib": round(rss("trace_1x"), 2), "trace_10x_rss_gib": round(rss("trace_10x"), 2),
    "trace_10x_over_1x_rss_same_windows": round(rss("trace_10x_w128") / rss("trace_1x_w128"), 3),
    "trace_1x_w128_rss_gib": round(rss("trace_1x_w128"), 2),
    "trace_10x_w128_rss_gib": round(rss("trace_10x_w128"), 2),
}, indent=1))
PY
