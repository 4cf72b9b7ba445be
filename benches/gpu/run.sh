#!/usr/bin/env bash
# Issue 12's GPU checks, part 2 of 2, on the GPU machine (part 1, `benches/gpu/prepare.sh`, builds
# gpu-kit/ here). One script, ≈ 5–9 min, every step time-boxed; what a step prints goes to
# $OUT/logs.tar.gz, the numbers to $OUT/summary.json and a table to stdout:
#
#   A. the side-by-side task of `benches/kronfluence/run.sh` (Llama-shaped, 917 × 64 tokens,
#      8 full-rank queries, empirical Fisher, damping 1e-3, every Linear) on the GPU:
#      - `tda fit` + `tda trace` with the sums and the contraction on the device
#        (`--compute-on device`) against the host path, model on the GPU in both;
#      - mixed precision (`--precision bf16`) and the model in bf16 (`--dtype bf16`) against f32;
#      - Kronfluence 1.0.1 on the same GPU: wall time and score agreement.
#   B. a GPT-2-small-shaped model (124M, vocabulary 50,257, random init), documents of one
#      512-token window: `tda train` (tokens/s), `tda fit` on 256 windows, `tda trace` of 32
#      rank-32 queries over 1,000 windows (blocks tracked, empirical Fisher so that the two tools'
#      scores can be compared), P1 = scoring ÷ training tokens/s (goal ≥ 0.8); Kronfluence on the
#      same job (goal: tda ≥ 3× faster end to end), score agreement.
#
#   bash benches/gpu/run.sh                      # on the GPU machine, from the repository root
#   DEVICE=cpu PY=target/kronfluence-venv/bin/python \
#     GPT2_HIDDEN=64 GPT2_LAYERS=2 GPT2_VOCAB=1000 GPT2_DOCS=40 GPT2_FIT_DOCS=16 GPT2_QUERIES=4 \
#     GPT2_WORDS=127 A_DOCS=64 bash benches/gpu/run.sh      # a dry run of the whole script on a CPU
#
# TDA=PATH runs another binary (target/release/tda, say) instead of the kit's gpu-kit/tda.xz.
set -uo pipefail
cd "$(dirname "$0")/../.."
tda="${TDA:-}"
device="${DEVICE:-cuda}"
py="${PY:-python3}"
out="${OUT:-/tmp/tda-gpu-out}"
work="${WORK:-/tmp/tda-gpu}"
rm -rf "$work" && mkdir -p "$work" "$out"
: > "$out/steps.txt"
if [ -z "$tda" ]; then  # the kit's compressed CUDA build
  tda="$work/tda"
  xz -dc gpu-kit/tda.xz > "$tda" && chmod +x "$tda" || { echo "gpu-kit/tda.xz: missing or unreadable (run benches/gpu/prepare.sh here first)"; exit 1; }
  echo "kit built from $(cat gpu-kit/COMMIT 2>/dev/null || echo 'an unknown commit')" | tee "$out/kit.txt"
fi
export PYTHONUNBUFFERED=1
if [ -d gpu-kit/whl ] && ls gpu-kit/whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$work/site" gpu-kit/whl/*.whl && export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$device" = cuda ]; then
  # burn-cuda loads libcuda and NVRTC at run time: the toolkit's and the pip wheel's folders.
  nvrtc=$("$py" -c "
import glob, os, site
for d in site.getsitepackages():
    for f in glob.glob(d + '/nvidia/**/libnvrtc.so*', recursive=True):
        print(os.path.dirname(f)); raise SystemExit
" 2>/dev/null)
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${nvrtc:+$nvrtc:}${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
  ls /usr/local/cuda/lib64 2>/dev/null | grep -E "nvrtc|cudart" >> "$out/gpu.txt"
fi
"$py" -c "import torch, transformers, kronfluence; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"

# step NAME SECONDS COMMAND...: stdout → $work/NAME.json, stderr → $work/NAME.log; one line in
# steps.txt with the status and the wall time. A failed step does not stop the script; no step
# runs past BUDGET_S (default 540 s) from the start, so the summary is written inside the device
# tool's 600 s.
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 15 ))
  if [ "$left" -lt 5 ]; then
    printf '%-16s %8s    %s\n' "$name" - "skipped: no time left" | tee -a "$out/steps.txt"; return
  fi
  [ "$left" -lt "$limit" ] && limit=$left
  local t0; t0=$(date +%s%N)
  timeout "$limit" "$@" > "$work/$name.json" 2> "$work/$name.log"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local status=ok
  [ $rc -eq 124 ] && status="timed out after ${limit} s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc): $(tail -n 1 "$work/$name.log")"
  printf '%-16s %6d.%d s  %s\n' "$name" $(( ms / 1000 )) $(( ms % 1000 / 100 )) "$status" | tee -a "$out/steps.txt"
}

# ---- A: the side-by-side task on the GPU -------------------------------------------------
a="$work/a"
step a_task 120 "$py" benches/kronfluence/make_task.py "$a" --docs "${A_DOCS:-917}"
step a_smoke 60 "$tda" logprobs --model "$a/model" --text "w5 w17 w3" --device "$device" --json
for on in host device; do
  step "a_fit_$on" 150 "$tda" fit --model "$a/model" --corpus "$a/corpus.jsonl" --out "$a/f_$on" \
    --modules all --fisher empirical --max-len 64 --batch-size 16 --device "$device" --compute-on "$on" --json
done
# Every document scored against every query, so that two runs can be compared rank by rank.
a_trace=(trace --model "$a/model" --corpus "$a/corpus.jsonl" --queries "$a/queries.jsonl" --damping 1e-3
  --query-rank full --top-k all --max-len 64 --batch-size 16 --granularity window --device "$device" --json)
for on in host device; do
  step "a_trace_$on" 120 "$tda" "${a_trace[@]}" --factors "$a/f_host" --compute-on "$on"
done
step a_trace_fdev 120 "$tda" "${a_trace[@]}" --factors "$a/f_device" --compute-on device
step a_trace_pbf16 120 "$tda" "${a_trace[@]}" --factors "$a/f_host" --compute-on device --precision bf16
step a_trace_dbf16 120 "$tda" "${a_trace[@]}" --factors "$a/f_host" --compute-on device --dtype bf16
step a_kron 240 "$py" benches/kronfluence/kron.py "$a" --device "$device"
"$py" benches/gpu/summary.py "$work" "$out" > /dev/null  # part A's numbers, in case B runs out of time

# ---- B: GPT-2-small --------------------------------------------------------------------------
b="$work/b"
step b_task 180 "$py" benches/kronfluence/make_task.py "$b" --arch gpt2 --hidden "${GPT2_HIDDEN:-768}" \
  --layers "${GPT2_LAYERS:-12}" --vocab "${GPT2_VOCAB:-50257}" --docs "${GPT2_DOCS:-1000}" \
  --doc-words "${GPT2_WORDS:-511}" --queries "${GPT2_QUERIES:-32}" --fit-docs "${GPT2_FIT_DOCS:-256}"
len=$(( ${GPT2_WORDS:-511} + 1 ))
cat > "$b/train.toml" <<TOML
[train]
seq_len = $len
batch_size = 8
steps = 16
lr = 1e-4
warmup_steps = 0
seed = 0
checkpoint_every = 0
TOML
step b_train 240 "$tda" train --config "$b/train.toml" --init "$b/model" --corpus "$b/corpus.jsonl" \
  --out "$b/trained" --device "$device" --json
step b_fit 300 "$tda" fit --model "$b/model" --corpus "$b/fit.jsonl" --out "$b/factors" --fisher empirical \
  --max-len "$len" --batch-size 8 --device "$device" --json
step b_trace 300 "$tda" trace --model "$b/model" --factors "$b/factors" --corpus "$b/corpus.jsonl" \
  --queries "$b/queries.jsonl" --query-rank 32 --top-k all --max-len "$len" --batch-size 8 \
  --granularity window --device "$device" --json
step b_kron 400 "$py" benches/kronfluence/kron.py "$b" --device "$device" --modules blocks --damping heuristic \
  --query-rank 32 --fit-corpus "$b/fit.jsonl" --batch 8 --query-batch 32

"$py" benches/gpu/summary.py "$work" "$out"
tar -czf "$out/logs.tar.gz" -C "$work" $(cd "$work" && ls *.log 2>/dev/null) \
  $(cd "$work" && find . -maxdepth 1 -name '*.json' -size -2M -printf '%f\n')
