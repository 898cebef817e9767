#!/usr/bin/env bash
# The test suite (CPU; GPU tests skip with the reason when MindSpore/torch see no GPU). Extra args go to pytest;
# test paths among them replace the default `tests`: bash scripts/test.sh tests/test_parity.py -s
source "$(dirname "$0")/venv.sh"
cd "$REPO_ROOT"
targets=(tests)
for arg in "$@"; do
  case "$arg" in tests/*|tests|*.py|*.py::*) targets=() ;; esac
done
exec python -m pytest -q -p no:cacheprovider "${targets[@]}" "$@"
