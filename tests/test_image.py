"""The container image, built for real by scripts/build-image.sh (mmdebstrap base, buildah build
with this machine's pip configuration, `oci-volume-csi --help` inside), then read back from the
OCI archive it writes. About two minutes here, hence ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from manifests import ROOT, project_version


def blob(archive: tarfile.TarFile, digest: str) -> dict:
    member = archive.extractfile("blobs/" + digest.replace(":", "/"))
    assert member is not None
    return json.load(member)


@pytest.mark.slow
def test_image_builds_runs_and_is_not_root_by_default(tmp_path: Path) -> None:
    output = tmp_path / "image.oci.tar"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh"), str(output)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    shown = done.stdout[done.stdout.index("usage: oci-volume-csi"):]
    for command in ("serve", "fuse", "cache", "publish", "unpublish", "inspect", "describe", "convert"):
        assert re.search(rf"^\s+{command}\s", shown, re.MULTILINE), f"{command} missing from the help:\n{shown[:2000]}"

    with tarfile.open(output) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        (entry,) = index["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == f"localhost/oci-volume-csi:{project_version()}"
        manifest = blob(archive, entry["digest"])
        config = blob(archive, manifest["config"]["digest"])["config"]
    assert config["Entrypoint"] == ["oci-volume-csi"]
    assert config["User"] == "65532:65532"
