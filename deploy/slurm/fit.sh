#!/usr/bin/env bash
# Submit a sharded `tda fit` to Slurm as a chain of jobs:
#
#   ekfac:    cov array -> merge (eigenbases) -> lambda array -> merge (factors)
#   kfac:     cov array -> merge (factors)
#   diagonal: lambda array -> merge (factors)
#   identity: one unsharded `tda fit` job (no corpus pass to shard)
#
# Each step waits for the previous one with --dependency=afterok (and
# --kill-on-invalid-dep=yes, so a failure cancels the rest of the chain).
# Prints one `name=jobid` line per job.
#
#   MODEL=m CORPUS=c.jsonl OUT_DIR=runs/x N=8 deploy/slurm/fit.sh [-- more tda fit flags]
#   deploy/slurm/fit.sh MODEL=m CORPUS=c.jsonl OUT_DIR=runs/x N=8 WAIT=1
#
# Settings (env or KEY=VALUE args):
#   MODEL CORPUS OUT_DIR N   required; parts go to $OUT_DIR/parts, the ekfac
#                            stage to $OUT_DIR/eigenbases, the result to
#                            $OUT_DIR/factors, logs to $OUT_DIR/logs
#   STRATEGY   ekfac|kfac|diagonal|identity (ekfac)
#   EXTRA      more `tda fit` flags for every shard (split on whitespace)
#   DEVICE     cpu|cuda (cpu); cuda adds --gres=gpu:$GPUS_PER_TASK (1) to the shard tasks
#   CPUS       --cpus-per-task of the shard tasks (1); MERGE_CPUS for merges (CPUS)
#   MEM MERGE_MEM TIME PARTITION   --mem / --time / --partition (unset: site defaults)
#   SUBMIT_OPTS  more sbatch options for every job (split on whitespace)
#   MAX_PARALLEL  throttle: at most this many shard tasks at once (--array=0-N%M)
#   TDA        tda binary on the compute nodes (tda)
#   WAIT=1     block until the chain ends; exit non-zero if any job failed (POLL=5 s)
#   RESUME=1   keep the partials already in $OUT_DIR/parts (after a failed run):
#              shards whose partial exists exit at once, the merges run again
#   CLEAN=1    delete old partials in $OUT_DIR/parts first
#              (with neither, fit.sh refuses to start when partials exist)
#   DRY_RUN=1  print the sbatch commands instead of submitting
set -euo pipefail
PROG=fit.sh
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

parse_args "$@"
: "${MODEL:?MODEL not set (see $0 --help)}" "${CORPUS:?CORPUS not set}" "${OUT_DIR:?OUT_DIR not set}"
check_common
STRATEGY=${STRATEGY:-ekfac}
case $STRATEGY in ekfac|kfac|diagonal|identity) ;; *) die "STRATEGY must be ekfac, kfac, diagonal or identity, got '$STRATEGY'" ;; esac

OUT_DIR=$(abspath "$OUT_DIR")
PARTS=$OUT_DIR/parts STAGE=$OUT_DIR/eigenbases FACTORS=$OUT_DIR/factors LOG_DIR=$OUT_DIR/logs
export MODEL CORPUS STRATEGY

old=()
shopt -s nullglob; old=("$PARTS"/cov-*.part "$PARTS"/lambda-*.part); shopt -u nullglob
if ((${#old[@]})); then
  if [[ ${RESUME:-0} == 1 ]]; then
    log "RESUME=1: keeping ${#old[@]} existing output(s) in $PARTS; their shards exit at once"
    export SKIP_EXISTING=1
  elif [[ ${CLEAN:-0} == 1 ]]; then
    log "CLEAN=1: removing ${#old[@]} old partial(s) in $PARTS"
    [[ ${DRY_RUN:-0} == 1 ]] || rm -f -- "${old[@]}"
  else
    die "$PARTS already holds ${#old[@]} partial(s) from an earlier run; set RESUME=1 to keep them and run only the missing shards, or CLEAN=1 to delete them"
  fi
fi
[[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$PARTS" "$LOG_DIR"

common_sbatch_opts
array="0-$((N - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"
dep() { echo "--dependency=afterok:$1" --kill-on-invalid-dep=yes; }
SHARD=$SLURM_DIR/fit-shard.sbatch MERGE=$SLURM_DIR/merge.sbatch

# map pass: NAME PASS [EXTRA_ENV...] ; sets JOBID
map_pass() {
  local pass=$1; shift
  submit "$pass" PASS="$pass" PARTS="$PARTS" "$@" -- "${COMMON_OPTS[@]}" "${SHARD_OPTS[@]}" \
    --job-name="tda-fit-$pass" --array="$array" \
    --output="$LOG_DIR/fit-$pass-%A_%a.log" ${AFTER:+$(dep "$AFTER")} "$SHARD"
}
# merge pass: PASS OUT ; sets JOBID
merge_pass() {
  submit "${1}_merge" -- "${COMMON_OPTS[@]}" "${MERGE_OPTS[@]}" \
    --job-name="tda-merge-$1" --output="$LOG_DIR/merge-$1-%j.log" $(dep "$AFTER") \
    "$MERGE" "$PARTS/$1-*.part" "$2"
}

AFTER=""
case $STRATEGY in
  identity)
    # shellcheck disable=SC2016
    submit identity -- "${COMMON_OPTS[@]}" "${MERGE_OPTS[@]}" --job-name=tda-fit-identity \
      --output="$LOG_DIR/fit-identity-%j.log" \
      --wrap="exec \"\$TDA\" fit --model \"\$MODEL\" --corpus \"\$CORPUS\" --strategy identity --out '$FACTORS' --device \"\$DEVICE\" \$EXTRA"
    ;;
  ekfac)
    map_pass cov;                         AFTER=$JOBID
    merge_pass cov "$STAGE";              AFTER=$JOBID
    map_pass lambda EIGENBASES="$STAGE";  AFTER=$JOBID
    merge_pass lambda "$FACTORS"
    ;;
  kfac)
    map_pass cov;                         AFTER=$JOBID
    merge_pass cov "$FACTORS"
    ;;
  diagonal)
    map_pass lambda;                      AFTER=$JOBID
    merge_pass lambda "$FACTORS"
    ;;
esac
log "factors will be written to $FACTORS; logs in $LOG_DIR"

if [[ ${WAIT:-0} == 1 && ${DRY_RUN:-0} != 1 ]]; then
  wait_jobs
fi
