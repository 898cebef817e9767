# Sourced by experiments/*/*/*/train.sh: `launch_train PYTHON ARGS...` runs `PYTHON -m ms_semiseg train ARGS`,
# on one device, or data-parallel under msrun (MindSpore's launcher) when NPROC > 1 or WORKER_NUM is set.
# Environment (see docs/distributed.md):
#   NPROC            workers on this machine (default 1 = no msrun)
#   WORKER_NUM       workers on all machines together (default NPROC); LOCAL_WORKER_NUM (default NPROC)
#   MASTER_ADDR      address of the machine with node rank 0 (default 127.0.0.1)
#   MASTER_PORT      its msrun scheduler port (default: a free port; required with several machines)
#   NODE_RANK        this machine's rank, 0..machines-1 (default 0)
#   MSRUN_LOG_DIR    worker and scheduler logs (default <repo>/outputs/msrun/<dataset>_<split>_<method>)
#   MSRUN            the msrun executable (default: the one beside PYTHON, else msrun on PATH)
# dataset.batch_size stays per device: N workers train with a global batch N times as large.

_LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_free_port() {
  "$1" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

launch_train() {
  local python="$1"
  shift
  local nproc="${NPROC:-1}"
  if [ "$nproc" -le 1 ] && [ -z "${WORKER_NUM:-}" ]; then
    exec "$python" -m ms_semiseg train "$@"
  fi
  local local_workers="${LOCAL_WORKER_NUM:-$nproc}"
  local workers="${WORKER_NUM:-$local_workers}"
  local port="${MASTER_PORT:-}"
  if [ -z "$port" ]; then
    if [ "$workers" -ne "$local_workers" ]; then
      echo "error: MASTER_PORT: not set, expected the same free port on every machine of a $workers-worker run" >&2
      exit 2
    fi
    port="$(_free_port "$python")"
  fi
  local here experiment
  here="$(pwd)"
  experiment="$(basename "$(dirname "$(dirname "$here")")")_$(basename "$(dirname "$here")")_$(basename "$here")"
  local log_dir="${MSRUN_LOG_DIR:-$_LAUNCH_ROOT/outputs/msrun/$experiment}"
  local msrun="${MSRUN:-msrun}"
  # msrun starts each worker as `python3 ...` from PATH: put the chosen interpreter's folder first
  case "$python" in
    */*) export PATH="$(cd "$(dirname "$python")" && pwd):$PATH"
         [ -z "${MSRUN:-}" ] && [ -x "$(dirname "$python")/msrun" ] && msrun="$(dirname "$python")/msrun" ;;
  esac
  echo "msrun: $local_workers of $workers workers on this machine (node rank ${NODE_RANK:-0}), scheduler" \
       "${MASTER_ADDR:-127.0.0.1}:$port, logs in $log_dir" >&2
  exec "$msrun" --worker_num="$workers" --local_worker_num="$local_workers" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$port" --node_rank="${NODE_RANK:-0}" \
    --log_dir="$log_dir" --join=True python3 -m ms_semiseg train --distributed "$@"
}
