#!/usr/bin/env bash
# Install what the demo and the tests need on Debian bookworm, as root:
# Debian packages (the registry, FUSE, umoci and skopeo for the image fixtures, openssl for test CAs,
# buildah and mmdebstrap for the container image build) and a venv in .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(docker-registry fuse3 libfuse3-dev pkg-config curl procps util-linux umoci skopeo openssl buildah mmdebstrap)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
