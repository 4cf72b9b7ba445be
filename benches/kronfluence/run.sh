#!/usr/bin/env bash
# Issue 12's side-by-side benchmark: `tda fit` + `tda trace` vs Kronfluence 1.0.1 (PyTorch, CPU)
# on the same Llama-shaped model (hidden 256, 4 layers, MLP 1024, vocabulary 2000, random init),
# 917 documents of 64 tokens, 8 queries; EK-FAC, empirical Fisher, damping 1e-3, full-rank
# queries, batch 16. Prints each tool's stage times, the ratio, and the score agreement as JSON.
# Not part of CI (it installs torch from PyPI into a venv, ~3 GB).
#   benches/kronfluence/run.sh [WORK_DIR]      # default target/kronfluence-bench
# KRON_VENV=DIR reuses a venv (default target/kronfluence-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-target/kronfluence-bench}"
venv="${KRON_VENV:-target/kronfluence-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import kronfluence, transformers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kronfluence==1.0.1" transformers
fi
cargo build --release -q --workspace --bin tda  # --workspace: the feature set of the tests, target/ reused
rm -rf "$work" && mkdir -p "$work"
"$venv/bin/python" benches/kronfluence/make_task.py "$work" 2>/dev/null
tda=target/release/tda
"$tda" fit --model "$work/model" --corpus "$work/corpus.jsonl" --out "$work/factors" \
  --modules all --fisher empirical --max-len 64 --batch-size 16 --json > "$work/fit.json"
"$tda" trace --model "$work/model" --factors "$work/factors" --corpus "$work/corpus.jsonl" \
  --queries "$work/queries.jsonl" --damping 1e-3 --query-rank full --top-k all --max-len 64 \
  --batch-size 16 --granularity window --json > "$work/trace.json"
"$venv/bin/python" benches/kronfluence/kron.py "$work" > "$work/kron.json" 2>"$work/kron.err"
python3 - "$work" <<'PY'
import json, subprocess, sys
w = sys.argv[1]
fit, trace, kron = (json.load(open(f"{w}/{n}.json")) for n in ("fit", "trace", "kron"))
r = trace["report"]
tda_s = fit["total_s"] + r["total_s"]
kron_s = kron["fit_s"] + kron["score_s"]
agree = json.loads(subprocess.run(["python3", "benches/kronfluence/compare.py", f"{w}/trace.json", f"{w}/kron.json"],
                                  check=True, capture_output=True, text=True).stdout)
print(json.dumps({
    "tda": {"fit_s": fit["total_s"], "covariance_pass_s": fit["covariance_pass_s"], "eigen_s": fit["eigen_s"],
            "lambda_pass_s": fit["lambda_pass_s"], "fit_model_s": fit["model_s"],
            "trace_s": r["total_s"], "trace_model_s": r["model_s"], "contraction_s": r["contraction_s"],
            "queries_s": r["queries_s"], "total_s": tda_s},
    "kronfluence": {"fit_s": kron["fit_s"], "score_s": kron["score_s"], "total_s": kron_s},
    "ratio_tda_over_kronfluence": tda_s / kron_s,
    "scores": {"spearman_min": agree["spearman_min"], "max_diff_rel": agree["max_diff_rel"]},
}, indent=2))
PY
