#!/usr/bin/env bash
# Evaluates a BRPG checkpoint (the teacher; prototypes are used in training only) on this experiment's val split
# with the upstream protocol (VOC: whole image at its original size; Cityscapes: sliding 769 windows at base size
# 2048) and prints per-class IoU tables; the last line is `mIoU: <linear>`. Runs from its own folder; works from
# anywhere:
#   CKPT=path/best.ckpt DATA_ROOT=path/VOC2012 DEVICE=CPU bash experiments/pascal/92/brpg/eval.sh [args]
# Environment (relative paths are taken from where you call it):
#   CKPT       default <repo>/ckpt/<voc|city>/<split>/brpg/checkpoints/best.ckpt
#   DATA_ROOT  default <repo>/data/VOC2012 (VOC) or <repo>/data/cityscapes (Cityscapes)
#   DEVICE     CPU or GPU; default GPU when MindSpore can use one, else CPU
# Extra arguments go to `python -m ms_semiseg eval` (e.g. --save-dir results --scales 0.75 1.0 1.25 --flip);
# relative paths among them are taken from this folder, where metrics.json goes unless --save-dir says otherwise.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")"
root="$(cd ../../../.. && pwd)"
split="$(basename "$(dirname "$PWD")")"
dataset="$(basename "$(dirname "$(dirname "$PWD")")")"
case "$dataset" in
  pascal) ckpt_folder=voc; data_folder=VOC2012 ;;
  cityscapes) ckpt_folder=city; data_folder=cityscapes ;;
  *) echo "error: $PWD: dataset folder '$dataset' is unknown, expected experiments/pascal or experiments/cityscapes" >&2
     exit 2 ;;
esac
from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller_dir" "$1" ;; esac; }
ckpt="$root/ckpt/$ckpt_folder/$split/brpg/checkpoints/best.ckpt"
data_root="$root/data/$data_folder"
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
