#!/usr/bin/env bash
# The test suite (CPU; GPU tests skip with the reason when MindSpore/torch see no GPU). Extra args go to pytest;
# test paths among them replace the default `tests`: bash scripts/test.sh tests/test_parity.py -s
#
# --old-isa: the tests marked `numeric` only, with oneDNN (MindSpore's and torch's) held to an older ISA
# (MS_SEMISEG_TEST_ISA, default AVX; SSE41 also works), i.e. with other convolution/matmul kernels than the default
# run: shows before CI does whether a numeric test holds on one CPU only. Not part of the default run.
#   bash scripts/test.sh --old-isa                      # numeric tests under AVX
#   MS_SEMISEG_TEST_ISA=SSE41 bash scripts/test.sh --old-isa tests/test_losses.py
source "$(dirname "$0")/venv.sh"
cd "$REPO_ROOT"
args=()
for arg in "$@"; do
  if [ "$arg" = "--old-isa" ]; then
    export MS_SEMISEG_TEST_ISA="${MS_SEMISEG_TEST_ISA:-AVX}"  # tests/conftest.py sets ONEDNN_MAX_CPU_ISA from it
  else
    args+=("$arg")
  fi
done
targets=(tests)
for arg in "${args[@]}"; do
  case "$arg" in tests/*|tests|*.py|*.py::*) targets=() ;; esac
done
exec python -m pytest -q -p no:cacheprovider "${targets[@]}" "${args[@]}"
