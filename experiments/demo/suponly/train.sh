#!/usr/bin/env bash
# Trains this demo experiment (suponly = supervised-only baseline, ours = PCR, brpg = BRPG) with its config.yaml on
# the bundled demo dataset, which it generates first when missing (python -m ms_semiseg.demo.make_data; reused when
# up to date). Writes to the config's saver.main_dir under the repo root, <repo>/outputs/demo/<method>/
# (checkpoints/best.ckpt, last.ckpt, log.csv, curves.png), where eval.sh and `python -m ms_semiseg demo` look.
# Runs from its own folder; works from anywhere:
#   DEVICE=CPU SEED=0 bash experiments/demo/ours/train.sh [args]
# Environment (relative paths are taken from where you call it):
#   DATA_ROOT   default <repo>/data/demo (generated when missing)
#   DEVICE      CPU or GPU; default GPU when MindSpore can use one, else CPU
#   SEED        default 2 (the trainer's; `python -m ms_semiseg demo` uses --seed 0)
#   NPROC       workers on this machine; NPROC > 1 trains data-parallel under msrun (docs/distributed.md)
# Extra arguments go to `python -m ms_semiseg train`, e.g. --resume, --work-dir DIR, --opts trainer.epochs=1.
# The supervised baseline's epochs (30 x 10 iterations) equal PCR's iterations (2 x 150) only with the default data.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")"
root="$(cd ../../.. && pwd)"
from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$caller_dir" "$1" ;; esac; }
python="python3"
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export GLOG_v="${GLOG_v:-3}"
args=(--config config.yaml)
if [ -n "${DATA_ROOT:-}" ]; then
  args+=(--data-root "$(from_caller "$DATA_ROOT")")
else
  "$python" -m ms_semiseg.demo.make_data --out "$root/data/demo"
fi
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
[ -n "${SEED:-}" ] && args+=(--seed "$SEED")
source "$root/scripts/launch_train.sh"
launch_train "$python" "${args[@]}" "$@"
