#!/usr/bin/env bash
# Build the driver's image for real and check it runs, as root on Debian bookworm:
#   1. a Debian bookworm base (python3, venv, ca-certificates) made by mmdebstrap, as the
#      Dockerfile's BASE_IMAGE, so the build needs no other registry than Debian's and pip's; it is
#      trimmed as Debian's slim images are (no docs, man pages, locales, apt caches);
#   2. `buildah build` of the Dockerfile, with this machine's pip configuration handed in
#      (scripts/pip_context.py: one pip.conf, wheel dirs, file:// indexes and CA bundle bound
#      read-only; buildah 1.28 leaves their mount points in the image, empty, and nothing else);
#   3. `oci-volume-csi --help` run inside the built image (as its default user, not root);
#   4. the image written as an OCI archive, for `skopeo copy oci-archive:FILE docker://REGISTRY/...`
#      or `ctr -n k8s.io images import FILE`.
# Usage: scripts/build-image.sh [OUTPUT.tar]   (default build/oci-volume-csi-VERSION.oci.tar)
# PYTHON names the interpreter whose pip configuration is handed in (default python3).
# buildah's storage is a temporary vfs store (`--isolation chroot` works in an unprivileged
# container too), removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install buildah mmdebstrap" >&2; exit 1; }
done
python=${PYTHON:-python3}
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
image=localhost/oci-volume-csi:$version
output=${1:-build/oci-volume-csi-$version.oci.tar}
work=$(mktemp -d /var/tmp/oci-volume-csi-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
bah() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs "$@"; }

echo "== base image (mmdebstrap, Debian bookworm)"
slim=(
    --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
)
mmdebstrap --quiet --variant=apt --include=ca-certificates,python3,python3-venv "${slim[@]}" \
    bookworm "$work/base.tar"
container=$(bah from scratch)
bah add --quiet "$container" "$work/base.tar" /
bah commit --quiet --rm "$container" localhost/oci-volume-csi-base:bookworm >/dev/null

echo "== build $image"
volumes=(--volume "$work/pip.conf:/etc/pip.conf:ro")
while IFS= read -r path; do
    [ -n "$path" ] && volumes+=(--volume "$path:$path:ro")
done < <("$python" scripts/pip_context.py "$work/pip.conf")
bah build --isolation chroot --build-arg BASE_IMAGE=localhost/oci-volume-csi-base:bookworm \
    "${volumes[@]}" --tag "$image" .

echo "== oci-volume-csi --help inside $image"
container=$(bah from --quiet "$image")
bah run --isolation chroot "$container" -- oci-volume-csi --help
bah run --isolation chroot "$container" -- oci-volume-csi serve --help >/dev/null
# the fuse container's postStart hook (deploy/daemonset.yaml) is a shell loop over these
bah run --isolation chroot "$container" -- sh -c 'command -v grep seq sleep >/dev/null'
bah rm "$container" >/dev/null

mkdir -p "$(dirname "$output")"
rm -f "$output"
bah push --quiet "$image" "oci-archive:$output:$image"
bah images "$image"
echo "wrote $output ($(du -h "$output" | cut -f1))"
