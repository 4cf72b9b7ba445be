#!/usr/bin/env bash
# Submit a sharded `tda trace` to Slurm: an array of N shard tasks, then a
# merge job (--dependency=afterok, --kill-on-invalid-dep=yes) that writes
# $OUT_DIR/results.parquet and $OUT_DIR/results.json.  Prints one
# `name=jobid` line per job.
#
#   MODEL=m FACTORS=runs/x/factors CORPUS=c.jsonl QUERIES=q.jsonl OUT_DIR=runs/t N=8 \
#     deploy/slurm/trace.sh [-- more tda trace flags]
#
# Settings (env or KEY=VALUE args):
#   MODEL FACTORS CORPUS QUERIES OUT_DIR N   required; shard outputs go to
#              $OUT_DIR/parts/trace-$I.parquet, logs to $OUT_DIR/logs
#   TOP_K      --top-k for the shards and the merge (10; `all` keeps everything)
#   EXTRA      more `tda trace` flags for every shard (split on whitespace)
#   MERGE_EXTRA  more `tda merge` flags (split on whitespace)
#   DEVICE     cpu|cuda (cpu); cuda adds --gres=gpu:$GPUS_PER_TASK (1) to the shard tasks
#   CPUS MERGE_CPUS MEM MERGE_MEM TIME PARTITION SUBMIT_OPTS MAX_PARALLEL TDA
#   WAIT=1 RESUME=1 CLEAN=1 DRY_RUN=1 POLL   as for fit.sh (see fit.sh --help)
set -euo pipefail
PROG=trace.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

parse_args "$@"
: "${MODEL:?MODEL not set (see $0 --help)}" "${FACTORS:?FACTORS not set}" "${CORPUS:?CORPUS not set}"
: "${QUERIES:?QUERIES not set}" "${OUT_DIR:?OUT_DIR not set}"
check_common
TOP_K=${TOP_K:-10}
[[ $TOP_K == all || $TOP_K =~ ^[0-9]+$ ]] || die "TOP_K must be an integer or 'all', got '$TOP_K'"

OUT_DIR=$(abspath "$OUT_DIR")
PARTS=$OUT_DIR/parts LOG_DIR=$OUT_DIR/logs
export MODEL FACTORS CORPUS QUERIES TOP_K

old=()
shopt -s nullglob; old=("$PARTS"/trace-*.parquet); shopt -u nullglob
if ((${#old[@]})); then
  if [[ ${RESUME:-0} == 1 ]]; then
    log "RESUME=1: keeping ${#old[@]} existing output(s) in $PARTS; their shards exit at once"
    export SKIP_EXISTING=1
  elif [[ ${CLEAN:-0} == 1 ]]; then
    log "CLEAN=1: removing ${#old[@]} old shard output(s) in $PARTS"
    [[ ${DRY_RUN:-0} == 1 ]] || rm -f -- "${old[@]}"
  else
    die "$PARTS already holds ${#old[@]} trace shard(s) from an earlier run; set RESUME=1 to keep them and run only the missing shards, or CLEAN=1 to delete them"
  fi
fi
[[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$PARTS" "$LOG_DIR"

common_sbatch_opts
array="0-$((N - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"
merge_flags=(--top-k "$TOP_K")
if [[ -n ${MERGE_EXTRA:-} ]]; then read -ra x <<<"$MERGE_EXTRA"; merge_flags+=("${x[@]}"); fi

submit trace PARTS="$PARTS" -- "${COMMON_OPTS[@]}" "${SHARD_OPTS[@]}" \
  --job-name=tda-trace --array="$array" --output="$LOG_DIR/trace-%A_%a.log" \
  "$SLURM_DIR/trace-shard.sbatch"
submit trace_merge JSON_OUT="$OUT_DIR/results.json" -- "${COMMON_OPTS[@]}" "${MERGE_OPTS[@]}" \
  --job-name=tda-merge-trace --output="$LOG_DIR/merge-trace-%j.log" \
  --dependency="afterok:$JOBID" --kill-on-invalid-dep=yes \
  "$SLURM_DIR/merge.sbatch" "$PARTS/trace-*.parquet" "$OUT_DIR/results.parquet" "${merge_flags[@]}"
log "results will be written to $OUT_DIR/results.parquet and $OUT_DIR/results.json; logs in $LOG_DIR"

if [[ ${WAIT:-0} == 1 && ${DRY_RUN:-0} != 1 ]]; then
  wait_jobs
fi
