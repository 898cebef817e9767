#!/usr/bin/env bash
# The bundled CPU demo: generates data/demo, trains supervised-only and PCR (and BRPG), evaluates, prints a table.
source "$(dirname "$0")/venv.sh"
cd "$REPO_ROOT"
exec python -m ms_semiseg demo "$@"
