# Shared helpers for deploy/slurm/fit.sh and trace.sh (sourced on the
# submission host only; the *.sbatch files are self-contained).
# shellcheck shell=bash

SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUBMITTED=()   # "name=jobid" in submission order

log() { printf '[%s] %s\n' "${PROG:-tda-slurm}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# KEY=VALUE arguments set settings; everything after "--" is appended to EXTRA.
parse_args() {
  local extra=()
  while (($#)); do
    case $1 in
      -h|--help) usage; exit 0 ;;
      --) shift; extra=("$@"); break ;;
      [A-Z_]*=*) export "${1?}" ;;
      *) die "unexpected argument '$1' (settings are KEY=VALUE; tda flags go after --)" ;;
    esac
    shift
  done
  if ((${#extra[@]})); then EXTRA="${EXTRA:+$EXTRA }${extra[*]}"; fi
  export EXTRA="${EXTRA:-}"
}

check_common() {
  [[ ${N:-} =~ ^[1-9][0-9]*$ ]] || die "N (number of shards) must be a positive integer, got '${N:-}'"
  DEVICE=${DEVICE:-cpu}
  [[ $DEVICE == cpu || $DEVICE == cuda ]] || die "DEVICE must be cpu or cuda, got '$DEVICE'"
  CPUS=${CPUS:-1}
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "CPUS must be a positive integer, got '$CPUS'"
  export TDA=${TDA:-tda} DEVICE CPUS N
  if [[ ${DRY_RUN:-0} != 1 ]]; then
    command -v sbatch >/dev/null || die "sbatch not found (is Slurm installed? see deploy/slurm/local-cluster.sh)"
    command -v "$TDA" >/dev/null || log "warning: '$TDA' is not on PATH here; it must exist on the compute nodes"
  fi
}

abspath() { # like realpath -m, no need for the path to exist
  case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac
}

# sbatch options shared by every job.
common_sbatch_opts() {
  COMMON_OPTS=(--parsable --export=ALL)
  [[ -n ${PARTITION:-} ]] && COMMON_OPTS+=(--partition="$PARTITION")
  [[ -n ${TIME:-} ]] && COMMON_OPTS+=(--time="$TIME")
  if [[ -n ${SUBMIT_OPTS:-} ]]; then
    local x; read -ra x <<<"$SUBMIT_OPTS"; COMMON_OPTS+=("${x[@]}")
  fi
  # options for the map (shard) tasks only
  SHARD_OPTS=(--cpus-per-task="$CPUS")
  [[ -n ${MEM:-} ]] && SHARD_OPTS+=(--mem="$MEM")
  [[ $DEVICE == cuda ]] && SHARD_OPTS+=(--gres="gpu:${GPUS_PER_TASK:-1}")
  # options for the merge jobs
  MERGE_OPTS=(--cpus-per-task="${MERGE_CPUS:-$CPUS}")
  [[ -n ${MERGE_MEM:-${MEM:-}} ]] && MERGE_OPTS+=(--mem="${MERGE_MEM:-$MEM}")
  return 0
}

# submit NAME [VAR=value ...] -- SBATCH_ARGS...   -> sets JOBID, records name=jobid
# VAR=value pairs are exported to the job (through the environment, so that
# values may contain commas).
submit() {
  local name=$1; shift
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    JOBID=$((9000 + ${#SUBMITTED[@]}))
    printf 'DRY_RUN: env' >&2; printf ' %q' "${envs[@]}" sbatch "$@" >&2; printf '\n' >&2
  else
    local out
    if ! out=$(env "${envs[@]}" sbatch "$@"); then
      # do not leave half a chain behind
      local e ids=()
      for e in "${SUBMITTED[@]}"; do ids+=("${e#*=}"); done
      if ((${#ids[@]})); then scancel "${ids[@]}" 2>/dev/null || true; log "cancelled the jobs already submitted: ${ids[*]}"; fi
      die "sbatch for '$name' failed"
    fi
    JOBID=${out%%;*}
    [[ $JOBID =~ ^[0-9]+$ ]] || die "unexpected sbatch output for '$name': $out"
  fi
  SUBMITTED+=("$name=$JOBID")
  printf '%s=%s\n' "$name" "$JOBID"
}

# States in which a job (or array task) is finished.
_terminal() {
  case $1 in
    COMPLETED|FAILED|CANCELLED*|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED|BOOT_FAIL|DEADLINE|SPECIAL_EXIT|REVOKED) return 0 ;;
    *) return 1 ;;
  esac
}

# Poll squeue until every submitted job has finished.  Returns 1 when any job
# or array task ended in a state other than COMPLETED (its dependents are
# cancelled by --kill-on-invalid-dep=yes; any left pending are cancelled here).
# sacct is not needed (no slurmdbd on small clusters); finished jobs stay
# visible to squeue -t all for MinJobAge seconds (default 300), far longer
# than the poll interval.
wait_jobs() {
  local poll=${POLL:-5} entry name id lines line tid state reason
  local -A done_=() failed_=()
  local ndone=0 total=${#SUBMITTED[@]} t0=$SECONDS last=""
  log "waiting for ${total} job(s): ${SUBMITTED[*]}"
  while ((ndone < total)); do
    for entry in "${SUBMITTED[@]}"; do
      name=${entry%%=*} id=${entry#*=}
      [[ -n ${done_[$id]:-} ]] && continue
      if ! lines=$(squeue -h -t all -j "$id" -o '%i|%T|%r' 2>/dev/null) || [[ -z $lines ]]; then
        # record gone: finished longer than MinJobAge ago and we never saw it
        log "job $name ($id) is no longer known to slurmctld; treating it as failed"
        done_[$id]=1 failed_[$id]="record purged"; ((++ndone)); continue
      fi
      local all_done=1 bad=""
      while IFS='|' read -r tid state reason; do
        if _terminal "$state"; then
          [[ $state == COMPLETED ]] || bad+="${bad:+, }$tid $state${reason:+ ($reason)}"
        else
          all_done=0
          if [[ $reason == DependencyNeverSatisfied ]]; then
            bad+="${bad:+, }$tid dependency never satisfied (cancelled)"
            scancel "$id" 2>/dev/null || true
          fi
        fi
      done <<<"$lines"
      if [[ -n $bad ]]; then failed_[$id]=$bad; fi
      if ((all_done)); then done_[$id]=1; ((++ndone)); fi
    done
    if [[ $ndone != "$last" && ${QUIET:-0} != 1 ]]; then
      log "$ndone/$total jobs finished ($((SECONDS - t0))s)"
    fi
    last=$ndone
    ((ndone < total)) && sleep "$poll"
  done
  local rc=0
  for entry in "${SUBMITTED[@]}"; do
    name=${entry%%=*} id=${entry#*=}
    if [[ -n ${failed_[$id]:-} ]]; then
      log "FAILED: $name ($id): ${failed_[$id]}"; rc=1
    fi
  done
  ((rc == 0)) && log "all jobs completed in $((SECONDS - t0))s"
  ((rc == 0)) || log "see the logs under ${LOG_DIR:-the log folder}"
  return $rc
}
