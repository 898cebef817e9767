#!/usr/bin/env bash
# Evaluates this experiment's checkpoint (CKPT, DATA_ROOT, DEVICE; extra arguments go to `ms_semiseg eval`).
# Defaults and details: scripts/experiment.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)" && root="$here"
until [ -f "$root/scripts/experiment.sh" ]; do [ "$root" != / ] || exit 2; root="$(dirname "$root")"; done
source "$root/scripts/experiment.sh" && experiment_eval "$here" "$@"
