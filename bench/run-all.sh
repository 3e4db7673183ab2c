#!/usr/bin/env bash
# Every benchmark, one after another, each refreshing its section of bench/RESULTS.md
# (the machine, the command and the date are in each section). Run as root, after
# `bash scripts/setup.sh`; bench_compare also wants Debian's containerd (apt-get install
# containerd), and is reported without it. About 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
for script in bench_publish.py bench_image.py bench_compare.py bench_scale.py bench_verify.py; do
    echo "=== bench/$script"
    unshare -m --propagation private .venv/bin/python "bench/$script"
done
