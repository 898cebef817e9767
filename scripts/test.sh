#!/usr/bin/env bash
# The test suite (CPU; GPU tests skip with the reason when MindSpore/torch see no GPU). Extra args go to pytest.
source "$(dirname "$0")/venv.sh"
cd "$REPO_ROOT"
exec python -m pytest -q -p no:cacheprovider tests "$@"
