#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine (as root): installs, then runs pytest.
# The suite enters a private mount namespace itself, so no mount outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
