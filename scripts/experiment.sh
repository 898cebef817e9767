# Sourced by every experiments/<dataset>/<split>/<method>/{eval,train}.sh and experiments/demo/<method>/*.sh:
#   experiment_eval  DIR [ARGS...]   python -m ms_semiseg eval  --config DIR/config.yaml ... ARGS
#   experiment_train DIR [ARGS...]   python -m ms_semiseg train --config DIR/config.yaml ... ARGS (msrun when NPROC > 1)
# Both run from DIR (relative paths among ARGS are taken from there, e.g. --save-dir results), use <repo>/.venv
# when it exists, and read the environment (relative paths are taken from where you call the script):
#   CKPT        eval: checkpoint; default <repo>/ckpt/<voc|city>/<split>/<semiseg_with_proto|suponly|brpg>/checkpoints/
#               best.ckpt (where train.sh writes), <repo>/outputs/demo/<method>/checkpoints/best.ckpt for the demo
#   DATA_ROOT   dataset root; default <repo>/data/VOC2012, <repo>/data/cityscapes or <repo>/data/demo (the demo's
#               train.sh generates it first when missing: python -m ms_semiseg.demo.make_data)
#   DEVICE      CPU, GPU or Ascend; default GPU when MindSpore can use one, else CPU
#   PRETRAINED  train: ImageNet backbone .ckpt (`python -m convert pth2ckpt`); default <repo>/pretrained/resnet101.ckpt
#               when it exists, else none (random init, far below the published numbers); the demo configs name
#               their own (saver.pretrain: ckpt/demo/resnet18_source.ckpt)
#   SEED        train: default 2 (U2PL's)
#   NPROC ...   train: data-parallel under msrun, see scripts/launch_train.sh and docs/distributed.md
# eval prints per-class IoU tables and ends with `mIoU: <linear> (proto: <proto>)` (PCR) or `mIoU: <linear>`.

_EXPERIMENT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_CALLER_DIR="$PWD"

_from_caller() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$_CALLER_DIR" "$1" ;; esac; }

_error() { echo "error: $*" >&2; exit 2; }

# Sets: python, data_default, ckpt_default, demo (0/1) for experiment folder $1; cds into it.
_experiment_setup() {
  cd "$1" || _error "$1: experiment folder not found"
  [ -f config.yaml ] || _error "$PWD/config.yaml: missing, expected the experiment's config next to its scripts"
  local method split dataset
  method="$(basename "$PWD")"
  split="$(basename "$(dirname "$PWD")")"
  dataset="$(basename "$(dirname "$(dirname "$PWD")")")"
  demo=0
  if [ "$split" = demo ]; then
    demo=1
    data_default="$_EXPERIMENT_ROOT/data/demo"
    ckpt_default="$_EXPERIMENT_ROOT/outputs/demo/$method/checkpoints/best.ckpt"
  else
    local ckpt_folder method_folder
    case "$dataset" in
      pascal) ckpt_folder=voc; data_default="$_EXPERIMENT_ROOT/data/VOC2012" ;;
      cityscapes) ckpt_folder=city; data_default="$_EXPERIMENT_ROOT/data/cityscapes" ;;
      *) _error "$PWD: dataset folder '$dataset' is unknown, expected experiments/pascal, cityscapes or demo" ;;
    esac
    case "$method" in
      ours) method_folder=semiseg_with_proto ;;
      *) method_folder="$method" ;;
    esac
    ckpt_default="$_EXPERIMENT_ROOT/ckpt/$ckpt_folder/$split/$method_folder/checkpoints/best.ckpt"
  fi
  python="python3"
  [ -x "$_EXPERIMENT_ROOT/.venv/bin/python" ] && python="$_EXPERIMENT_ROOT/.venv/bin/python"
  export PYTHONPATH="$_EXPERIMENT_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export GLOG_v="${GLOG_v:-3}"
}

experiment_eval() {
  _experiment_setup "$1"
  shift
  local ckpt="$ckpt_default" data_root="$data_default" args=()
  [ -n "${CKPT:-}" ] && ckpt="$(_from_caller "$CKPT")"
  [ -n "${DATA_ROOT:-}" ] && data_root="$(_from_caller "$DATA_ROOT")"
  [ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
  exec "$python" -m ms_semiseg eval --config config.yaml --ckpt "$ckpt" --data-root "$data_root" "${args[@]}" "$@"
}

experiment_train() {
  _experiment_setup "$1"
  shift
  local args=(--config config.yaml) pretrained="${PRETRAINED:-}"
  if [ "$demo" = 0 ] && [ -z "$pretrained" ] && [ -f "$_EXPERIMENT_ROOT/pretrained/resnet101.ckpt" ]; then
    pretrained="$_EXPERIMENT_ROOT/pretrained/resnet101.ckpt"
  fi
  [ -n "$pretrained" ] && args+=(--pretrained "$(_from_caller "$pretrained")")
  if [ -n "${DATA_ROOT:-}" ]; then
    args+=(--data-root "$(_from_caller "$DATA_ROOT")")
  elif [ "$demo" = 1 ]; then  # generated once, reused when up to date
    "$python" -m ms_semiseg.demo.make_data --out "$data_default"
  fi
  [ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
  [ -n "${SEED:-}" ] && args+=(--seed "$SEED")
  source "$_EXPERIMENT_ROOT/scripts/launch_train.sh"
  launch_train "$python" "${args[@]}" "$@"
}
