#!/usr/bin/env bash
# Issue 12: a GPT-2-small-shaped model (124M parameters, random init, vocabulary 50,257, made by
# `examples/vocab_model`) on this machine: `tda fit` on FIT_WINDOWS windows × 512 tokens, `tda
# trace` of 32 queries over TRACE_WINDOWS windows, both with default flags otherwise (blocks
# tracked, EK-FAC, true Fisher, rank-32 queries); peak RSS and wall time per stage, and P1 =
# scoring tokens/s ÷ training tokens/s (`tda train`, batches of 1 × 512, same model, same run).
#
#   bash benches/gpt2_small/run.sh [WORK_DIR]                        # the issue's sizes: 256 and 1,000 windows (≈ 3 h on 2 cores)
#   FIT_WINDOWS=32 TRACE_WINDOWS=64 bash benches/gpt2_small/run.sh   # scaled (≈ 25 min)
#   DEVICE=cuda bash benches/gpt2_small/run.sh                       # a build with --features tda-cli/cuda
#
# Peak memory does not grow with the window count (one batch's taps and logits at a time, top-K
# ranking state), so the scaled run's peaks are the full run's; its times scale per token.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/tda-gpt2-small}"
fit_windows="${FIT_WINDOWS:-256}"
trace_windows="${TRACE_WINDOWS:-1000}"
device="${DEVICE:-cpu}"
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release -q --workspace --bin tda  # --workspace: the feature set of the tests, target/ reused
cargo build --release -q --workspace --example vocab_model
tda=target/release/tda
rm -rf "$work" && mkdir -p "$work"
# Documents of 40 biographies (≈ 1,930 tokens, ≈ 3.7 windows of 512 each).
max_windows=$(( fit_windows > trace_windows ? fit_windows : trace_windows ))
target/release/examples/vocab_model "$work/m" 768 12 $(( max_windows / 3 + 1 )) 40 50257 gpt2 32
rss() { grep "Maximum resident set size" "$1" | awk '{printf "%.2f", $6 / 1048576}'; }
run() { # name, command...
  local name=$1; shift
  /usr/bin/time -v "$@" > "$work/$name.json" 2> "$work/$name.time" || { cat "$work/$name.time"; exit 1; }
  echo "$name: peak RSS $(rss "$work/$name.time") GiB"
}
m="$work/m/model" c="$work/m/corpus.jsonl"
cat > "$work/train.toml" <<TOML
[train]
seq_len = 512
batch_size = 1
steps = 8
lr = 1e-4
warmup_steps = 0
seed = 0
checkpoint_every = 0
TOML
run train "$tda" train --config "$work/train.toml" --init "$m" --corpus "$c" --out "$work/trained" \
  --device "$device" --json
run fit "$tda" fit --model "$m" --corpus "$c" --out "$work/factors" --max-len 512 \
  --max-windows "$fit_windows" --device "$device" --json
run trace "$tda" trace --model "$m" --factors "$work/factors" --corpus "$c" \
  --queries "$work/m/queries.jsonl" --max-len 512 --max-windows "$trace_windows" --device "$device" --json
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
train = json.load(open(f"{w}/train.json"))
fit = json.load(open(f"{w}/fit.json"))
tr = json.load(open(f"{w}/trace.json"))["report"]
print(f"fit: {fit['windows']} windows, {fit['tokens']} tokens: covariance pass {fit['covariance_pass_s']:.1f} s, "
      f"eigendecompositions {fit['eigen_s']:.1f} s, Λ pass {fit['lambda_pass_s']:.1f} s "
      f"(model forward+backward {fit['model_s']:.1f} s, accumulation {fit['accumulate_s']:.1f} s), total {fit['total_s']:.1f} s")
print(f"trace: {tr['queries']} queries over {tr['candidates']} windows ({tr['candidate_tokens']} tokens): "
      f"queries {tr['queries_s']:.1f} s, model {tr['model_s']:.1f} s, contraction {tr['contraction_s']:.1f} s, "
      f"total {tr['total_s']:.1f} s")
p1 = tr["candidate_tokens_per_s"] / train["tokens_per_s"]
print(f"train {train['tokens_per_s']:.1f} tok/s, scoring {tr['candidate_tokens_per_s']:.1f} tok/s → P1 {p1:.2f} (goal ≥ 0.8)")
PY
