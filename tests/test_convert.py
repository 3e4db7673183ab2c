"""``oci-volume-csi convert`` on real-shaped manifests (tests/convert/*.in.yaml).

Each input has a reviewed expected output (``*.out.yaml``): the Pod of the Kubernetes image
volume docs, the Klaus Deployment its Helm chart renders, a multi-document file with every
workload kind, pull-secret cases, and warm-metal's image driver volumes. Besides matching those byte for byte, the output must
differ from the input in the image volumes only, be valid for Kubernetes 1.27–1.34 (the input
is not, before 1.31), and carry attributes the driver accepts.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from csi_driver import DEFAULT_DRIVER_NAME
from csi_driver.convert import SECRET_COMMENT, WARM_METAL_DRIVER, convert, pod_specs, split_documents
from csi_driver.csi import spec
from kubelet import publish_request
from manifests import KUBERNETES_VERSIONS, documents, validate

CASES = Path(__file__).parent / "convert"
INPUTS = sorted(CASES.glob("*.in.yaml"))


def expected_path(source: Path) -> Path:
    return source.with_name(source.name.replace(".in.yaml", ".out.yaml"))


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "csi_driver", "convert", *args], input=stdin, capture_output=True, text=True
    )


def objects(path: Path) -> list[dict]:
    """The API objects in a file, a List's items taken one by one (there is no List schema)."""
    return [item for doc in documents(path) for item in (doc["items"] if doc["kind"] == "List" else [doc])]


def as_csi(volume: dict, pod: dict, driver: str = DEFAULT_DRIVER_NAME, pod_pull_secrets: bool = False) -> dict:
    """What convert must make of one image volume, written out independently of its code."""
    csi: dict = {"driver": driver, "readOnly": True}
    if pod.get("imagePullSecrets") and not pod_pull_secrets:
        csi["nodePublishSecretRef"] = {"name": pod["imagePullSecrets"][0]["name"]}
    csi["volumeAttributes"] = volume["image"]
    return {"name": volume["name"], "csi": csi}


def from_warm_metal(volume: dict) -> dict:
    """What convert must make of one warm-metal inline volume (tests/convert/warm-metal.in.yaml's kinds)."""
    old = volume["csi"]["volumeAttributes"]
    attributes = {"reference": old["image"]}
    if old.get("pullAlways") == "true":
        attributes["pullPolicy"] = "Always"
    elif ":" not in old["image"].rsplit("/", 1)[-1] or old["image"].endswith(":latest"):
        attributes["pullPolicy"] = "IfNotPresent"  # warm-metal's meaning, not this driver's default
    csi: dict = {"driver": DEFAULT_DRIVER_NAME, "readOnly": True}
    if old.get("secret"):
        csi["nodePublishSecretRef"] = {"name": old["secret"]}
    csi["volumeAttributes"] = attributes
    return {"name": volume["name"], "csi": csi}


def converted_volume(volume: dict, pod: dict) -> dict:
    if "image" in volume:
        return as_csi(volume, pod)
    if volume.get("csi", {}).get("driver") == WARM_METAL_DRIVER:
        return from_warm_metal(volume)
    return volume


def test_there_is_a_case_for_each_workload_kind() -> None:
    kinds = {obj["kind"] for path in INPUTS for obj in objects(path)}
    assert {"Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"} <= kinds


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.stem)
def test_output_is_the_reviewed_one(source: Path) -> None:
    converted, done = convert(source.read_text())
    assert done, f"{source.name} has volumes to convert"
    assert converted == expected_path(source).read_text()


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.stem)
def test_only_image_volumes_change(source: Path) -> None:
    wanted = copy.deepcopy(documents(source))
    for doc in wanted:
        for _, pod in pod_specs(doc):
            pod["volumes"] = [converted_volume(v, pod) for v in pod["volumes"]]
    assert documents(expected_path(source)) == wanted


def test_documents_without_image_volumes_come_out_byte_for_byte() -> None:
    source = CASES / "workloads.in.yaml"
    before = split_documents(source.read_text())
    after = split_documents(expected_path(source).read_text())
    assert len(before) == len(after) == 9
    same = [(b, a) for b, a in zip(before, after) if yaml.safe_load(b) == yaml.safe_load(a)]
    assert len(same) == 4  # the leading comment, the Service, the ConfigMap, the comment-only document
    for b, a in same:
        assert a == b


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.stem)
def test_output_is_valid_for_kubernetes_and_input_only_from_1_31(source: Path, version: str) -> None:
    for obj in objects(expected_path(source)):
        validate(obj, version)
    with_image_volumes = [o for o in objects(source) if any("image" in v for _, p in pod_specs(o) for v in p["volumes"])]
    for obj in with_image_volumes:
        if version >= "1.31":
            validate(obj, version)
        else:
            with pytest.raises(Exception, match="image"):
                validate(obj, version)


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.stem)
def test_converted_attributes_are_accepted_by_the_driver(source: Path, tmp_path: Path) -> None:
    for doc in documents(expected_path(source)):
        for _, pod in pod_specs(doc):
            for volume in pod["volumes"]:
                if "csi" in volume:
                    target = tmp_path / volume["name"] / "mount"
                    spec.from_publish_request(publish_request(target, volume["csi"]["volumeAttributes"]))


@pytest.mark.parametrize("source", INPUTS, ids=lambda p: p.stem)
def test_converting_twice_changes_nothing(source: Path) -> None:
    text = expected_path(source).read_text()
    assert convert(text) == (text, [])


def test_pull_secret_comment_says_where_the_secret_lives() -> None:
    text = expected_path(CASES / "pull-secrets.in.yaml").read_text()
    assert f"nodePublishSecretRef:  # {SECRET_COMMENT}; 1 more not used (one secret per volume)\n" in text
    klaus = expected_path(CASES / "klaus-deployment.in.yaml").read_text()
    assert klaus.count(f"nodePublishSecretRef:  # {SECRET_COMMENT}\n") == 2


def test_cli_writes_the_conversion_and_check_fails_until_done(tmp_path: Path) -> None:
    source = CASES / "workloads.in.yaml"
    done = run_cli(str(source))
    assert done.returncode == 0 and done.stdout == expected_path(source).read_text()
    assert done.stderr.count("image volume is now a csi volume") == 5

    from_stdin = run_cli(stdin=source.read_text())
    assert from_stdin.returncode == 0 and from_stdin.stdout == done.stdout

    check = run_cli("--check", str(source))
    assert check.returncode == 1 and check.stdout == ""
    for name in ("StatefulSet/agent", "DaemonSet/node-tools", "Job/build", "CronJob/nightly", "Pod/listed"):
        assert f"{name}: volume" in check.stderr
    assert run_cli("--check", str(expected_path(source))).returncode == 0


def test_cli_driver_name_and_unreadable_input(tmp_path: Path) -> None:
    other = run_cli("--driver-name", "images.example.com", str(CASES / "k8s-docs-pod.in.yaml"))
    assert other.returncode == 0 and "driver: images.example.com\n" in other.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Pod\nspec: {volumes: [\n")
    assert run_cli(str(broken)).returncode == 2
    missing = run_cli(str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr


def test_with_pod_pull_secrets_image_volumes_get_no_node_publish_secret_ref() -> None:
    """The driver reads imagePullSecrets itself then (serve --pod-pull-secrets), as the kubelet does."""
    source = CASES / "pull-secrets.in.yaml"
    text, done = convert(source.read_text(), pod_pull_secrets=True)
    assert len(done) == 2 and "nodePublishSecretRef" not in text
    wanted = copy.deepcopy(documents(source))
    for doc in wanted:
        for _, pod in pod_specs(doc):
            pod["volumes"] = [as_csi(v, pod, pod_pull_secrets=True) if "image" in v else v for v in pod["volumes"]]
    assert list(yaml.safe_load_all(text)) == wanted
    cli = run_cli("--pod-pull-secrets", str(source))
    assert cli.returncode == 0 and cli.stdout == text


def test_warm_metal_volumes_say_what_they_lose() -> None:
    done = run_cli(str(CASES / "warm-metal.in.yaml"))
    assert done.returncode == 0
    assert done.stderr.count("warm-metal volume is now a csi volume of oci-volume.csi.dev") == 2
    assert "Job/ephemeral-volume: volume latest: warm-metal's ephemeral volumes are writable" in done.stderr
    other = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec:\n  containers: []\n  volumes:\n"
    other += f"  - {{name: v, csi: {{driver: {WARM_METAL_DRIVER}, readOnly: true, volumeAttributes: "
    other += "{image: r.example/x:v1, secret: s, secretNamespace: b, extra: 'y'}}}\n"
    notes = run_cli(stdin=other).stderr
    assert "secretNamespace b is dropped" in notes and "attribute extra has no equivalent here" in notes
