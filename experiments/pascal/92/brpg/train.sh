#!/usr/bin/env bash
# Trains this experiment natively in MindSpore (CPU or GPU) with its config.yaml: brpg = BRPG (supervised warm-up,
# mean teacher with CutMix and a strong view, then trainer.prototype: feature sampling, k-means prototypes and the
# prototype loss; docs/brpg.md). Writes to the config's saver.main_dir under the repo root,
# <repo>/ckpt/<voc|city>/<split>/brpg/ (checkpoints/best.ckpt, last.ckpt, log.csv, curves.png), where eval.sh
# looks. Runs from its own folder; works from anywhere:
#   PRETRAINED=path/resnet101.ckpt DEVICE=GPU bash experiments/pascal/92/brpg/train.sh [args]
# Environment (relative paths are taken from where you call it):
#   PRETRAINED  ImageNet backbone as a MindSpore .ckpt (`python -m convert pth2ckpt --config config.yaml
#               --pth resnet101.pth --out <repo>/pretrained/resnet101.ckpt`); default <repo>/pretrained/resnet101.ckpt
#               when it exists, else none (random init, far below the published numbers)
#   DATA_ROOT   default: the config's dataset paths (<repo>/data/VOC2012 or <repo>/data/cityscapes)
#   DEVICE      CPU or GPU; default GPU when MindSpore can use one, else CPU
#   SEED        default 2 (U2PL's)
#   NPROC       workers on this machine; NPROC > 1 trains data-parallel under msrun with dataset.batch_size
#               per worker (several machines: WORKER_NUM, MASTER_ADDR, MASTER_PORT, NODE_RANK; see
#               docs/distributed.md)
# Extra arguments go to `python -m ms_semiseg train`, e.g. --resume, --work-dir DIR, --opts trainer.epochs=1.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")"
root="$(cd ../../../.. && pwd)"
from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller_dir" "$1" ;; esac; }
args=(--config config.yaml)
pretrained="${PRETRAINED:-}"
[ -z "$pretrained" ] && [ -f "$root/pretrained/resnet101.ckpt" ] && pretrained="$root/pretrained/resnet101.ckpt"
[ -n "$pretrained" ] && args+=(--pretrained "$(from_caller "$pretrained")")
[ -n "${DATA_ROOT:-}" ] && args+=(--data-root "$(from_caller "$DATA_ROOT")")
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
python="python3"
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"
source "$root/scripts/launch_train.sh"
launch_train "$python" "${args[@]}" "$@"
