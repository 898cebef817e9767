#!/usr/bin/env bash
# Trains this experiment with its config.yaml (PRETRAINED, DATA_ROOT, DEVICE, SEED, NPROC; extra arguments go
# to `ms_semiseg train`, e.g. --resume). Defaults and details: scripts/experiment.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)" && root="$here"
until [ -f "$root/scripts/experiment.sh" ]; do [ "$root" != / ] || exit 2; root="$(dirname "$root")"; done
source "$root/scripts/experiment.sh" && experiment_train "$here" "$@"
