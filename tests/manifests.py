"""The project's Kubernetes YAML (deploy/, examples/) as the tests read it, and schema checks.

Schemas come from the ``kubernetes-validate`` package, which ships them (no network). Validation
is strict (an unknown field fails) and must use the very version asked for: the package falls
back to an older schema for a version it lacks, and that would pass silently.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
EXAMPLES = ROOT / "examples"
KUBERNETES_VERSIONS = ("1.27", "1.29", "1.31", "1.34")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kubernetes_files(directory: Path) -> list[Path]:
    """The files holding Kubernetes objects (kustomization.yaml is kustomize's, not the API's)."""
    return sorted(p for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")


def deploy_object(kind: str) -> dict:
    """The one object of ``kind`` in deploy/."""
    found = [doc for path in kubernetes_files(DEPLOY) for doc in documents(path) if doc["kind"] == kind]
    assert len(found) == 1, f"deploy/ has {len(found)} {kind} objects, expected one"
    return found[0]


def validate(obj: dict, version: str) -> None:
    """Raise unless ``obj`` is valid for Kubernetes ``version`` by that version's own schema."""
    used = kubernetes_validate.validate(obj, version, strict=True)
    assert used == version, f"kubernetes-validate checked against {used}, not {version}: it ships no {version} schema"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
