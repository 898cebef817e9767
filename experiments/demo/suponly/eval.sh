#!/usr/bin/env bash
# Evaluates a checkpoint of this demo experiment on the demo val split (200 images, whole-image protocol) and
# prints per-class IoU tables; the last line is `mIoU: <linear> (proto: <proto>)`. Runs from its own folder; works
# from anywhere:
#   CKPT=path/best.ckpt DATA_ROOT=path/demo DEVICE=CPU bash experiments/demo/ours/eval.sh [args]
# Environment (relative paths are taken from where you call it):
#   CKPT       default <repo>/outputs/demo/<method>/checkpoints/best.ckpt (what train.sh and the demo write)
#   DATA_ROOT  default <repo>/data/demo
#   DEVICE     CPU or GPU; default GPU when MindSpore can use one, else CPU
# Extra arguments go to `python -m ms_semiseg eval` (e.g. --save-dir results); relative paths among them are taken
# from this folder, where metrics.json goes unless --save-dir says otherwise.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")"
root="$(cd ../../.. && pwd)"
method="$(basename "$PWD")"
from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller_dir" "$1" ;; esac; }
ckpt="$root/outputs/demo/$method/checkpoints/best.ckpt"
data_root="$root/data/demo"
[ -n "${CKPT:-}" ] && ckpt="$(from_caller "$CKPT")"
[ -n "${DATA_ROOT:-}" ] && data_root="$(from_caller "$DATA_ROOT")"
device_args=()
[ -n "${DEVICE:-}" ] && device_args=(--device "$DEVICE")
python="python3"
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"
exec "$python" -m ms_semiseg eval --config config.yaml --ckpt "$ckpt" --data-root "$data_root" \
  "${device_args[@]}" "$@"
