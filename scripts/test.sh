#!/usr/bin/env bash
# Set up (scripts/setup.sh dev,train,ui,bench) and run every check CI runs: ruff, mypy, import contracts, pytest.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,train,ui,bench
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff";        ruff check .
echo "== mypy";        mypy models training engines server nui ui
echo "== imports";     lint-imports
echo "== pytest";      pytest -q -p no:cacheprovider "$@"
