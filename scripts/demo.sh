#!/usr/bin/env bash
# The end-to-end demo, from a fresh Debian bookworm machine (as root): installs, then runs
# scripts/demo.py in a private mount namespace so no mount outlives it. Argument: fuse|bind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec unshare -m --propagation private .venv/bin/python scripts/demo.py "$@"
