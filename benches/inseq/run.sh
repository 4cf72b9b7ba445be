#!/usr/bin/env bash
# `tda cite --method mirage` vs Inseq's `attribute-context` (pip `inseq`, in a venv this script
# makes) on the planted RAG reader, the same prompts and reference answers; prints the wall times
# and their ratio as JSON. Not part of CI (it downloads torch from PyPI, ~3 GB with its CUDA wheels).
#   benches/inseq/run.sh [N_EXAMPLES]        # default 10
# INSEQ_VENV=DIR reuses a venv (default target/inseq-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-10}"
venv="${INSEQ_VENV:-target/inseq-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import inseq" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "inseq==0.7.1"
fi
cargo build --release -q --workspace --bin tda --example rag_jsonl  # --workspace: the feature set of the tests, target/ reused
target/release/examples/rag_jsonl "$n" 20241112 > target/inseq-rag.jsonl
python3 benches/inseq/compare.py target/release/tda "$venv/bin/python" tests/fixtures/rag target/inseq-rag.jsonl
