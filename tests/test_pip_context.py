"""scripts/pip_context.py hands every local file the machine's pip configuration names to the image
build: a file the build's pip.conf names but cannot open stops the build."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

from manifests import ROOT


def run_pip_context(tmp_path: Path, config: str, **env: str) -> tuple[list[str], configparser.ConfigParser]:
    pip_conf = tmp_path / "machine-pip.conf"
    pip_conf.write_text(config)
    out = tmp_path / "build-pip.conf"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pip_context.py"), str(out)],
        env={**clean, "PIP_CONFIG_FILE": str(pip_conf), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    handed = configparser.ConfigParser(interpolation=None)
    handed.read(out)
    return done.stdout.split(), handed


def test_a_constraints_file_the_pip_configuration_names_is_bound_into_the_build(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("grpcio<=1.85.1\n")
    paths, handed = run_pip_context(tmp_path, f"[global]\nconstraint = {constraints}\n")
    assert str(constraints) in paths
    assert handed["global"]["constraint"] == str(constraints)


def test_every_path_valued_pip_setting_reaches_the_build(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("ca.pem", "client.pem", "c1.txt", "c2.txt", "req.txt", "build-c.txt")}
    for path in files.values():
        path.write_text("\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    config = (
        "[global]\n"
        f"cert = {files['ca.pem']}\n"
        f"client-cert = {files['client.pem']}\n"
        f"constraint = {files['c1.txt']} {files['c2.txt']}\n"
        f"build-constraint = {files['build-c.txt']}\n"
        f"find-links = {wheels}\n"
        f"extra-index-url = file://{index} https://pypi.example/simple\n"
        "[install]\n"
        f"requirement = {files['req.txt']}\n"
    )
    paths, _ = run_pip_context(tmp_path, config)  # overrides each key the machine's own files set
    expected = [str(p) for p in files.values()] + [str(wheels), str(index.parent)]
    assert sorted(paths) == sorted(expected)


def test_a_constraints_file_named_by_a_pip_variable_is_bound_too(tmp_path: Path) -> None:
    constraints = tmp_path / "env-constraints.txt"
    constraints.write_text("\n")
    paths, handed = run_pip_context(tmp_path, "[global]\n", PIP_CONSTRAINT=str(constraints))
    assert str(constraints) in paths
    assert handed["global"]["constraint"] == str(constraints)
