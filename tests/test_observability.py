"""Metrics and logs a cluster admin reads (issue 9), from the real serve process."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from artifacts import PLUGIN_TREE
from driver import run_driver, walk
from kubelet import publish_request, target_for, unpublish_request
from private_registry import PASSWORD, USER
from registry_server import free_port
from test_authorization import pull_secret
from test_publish import expected_walk


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}, text


def value(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_rpcs_pulls_bytes_cache_and_publications(
    private_registry: str, private_plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    port = free_port()
    secret = pull_secret(USER, PASSWORD, private_registry)
    with run_driver(tmp_path, private_registry, "fuse", ["--metrics-address", f"127.0.0.1:{port}"]) as d:
        first = publish_request(target_for(kubelet_root, "pod-1", "p"), {"reference": private_plugin.reference}, secrets=secret)
        second = publish_request(target_for(kubelet_root, "pod-2", "p"), {"reference": private_plugin.reference}, secrets=secret)
        d.publish(first)
        d.publish(second)
        assert walk(Path(second.target_path)) == expected_walk(PLUGIN_TREE)
        families, text = scrape(port)
        p = "oci_volume_csi_"
        counts = [s for s in families[p + "rpc_duration_seconds"] if s.name.endswith("_count")]
        assert value(counts, method="NodePublishVolume", code="OK") == 2
        assert value(families[p + "pulls"], result="registry") == 1
        assert value(families[p + "pulls"], result="node") == 1
        assert value(families[p + "fetched_bytes"]) > 0
        assert value(families[p + "blobs"], source="registry") == 1
        assert value(families[p + "publications"]) == 2
        assert value(families[p + "in_use_digests"]) == 1
        assert value(families[p + "cache_digests"]) == 1
        assert value(families[p + "cache_bytes"]) > 0
        assert value(families[p + "fuse_view_up"]) == 1
        assert any(s.labels.get("host") == private_registry for s in families[p + "registry_request_duration_seconds"])
        for request in (first, second):
            d.unpublish(unpublish_request(request))
        families, text = scrape(port)
        assert value(families[p + "publications"]) == 0
    for unbounded in (first.volume_id, first.volume_context["csi.storage.k8s.io/pod.uid"], private_plugin.digest, PASSWORD):
        assert unbounded not in text


def test_json_logs_have_one_line_per_rpc_with_its_fields_and_no_secret(
    private_registry: str, private_plugin, tmp_path: Path, kubelet_root: Path
) -> None:
    secret = pull_secret(USER, PASSWORD, private_registry)
    flags = ["--log-format", "json", "--log-level", "DEBUG"]
    with run_driver(tmp_path, private_registry, "bind", flags) as d:  # after `serve`, as a DaemonSet's args
        request = publish_request(
            target_for(kubelet_root, "pod-1", "p"), {"reference": private_plugin.reference}, secrets=secret,
            pod_name="agent-7", namespace="team-a",
        )  # fmt: skip
        d.publish(request)
        d.unpublish(unpublish_request(request))
    output = d.log.read_text()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    publish = [line for line in lines if line.get("method") == "NodePublishVolume"]
    assert len(publish) == 1
    assert publish[0]["volume_id"] == request.volume_id
    assert publish[0]["pod"] == "team-a/agent-7"
    assert publish[0]["reference"] == private_plugin.reference
    assert publish[0]["digest"].startswith("sha256:")
    assert publish[0]["mode"] == "bind"
    assert publish[0]["code"] == "OK" and publish[0]["duration_ms"] > 0
    assert any("pulled" in line["msg"] and line["level"] == "debug" for line in lines)
    [full] = [line for line in lines if line["msg"].startswith("NodePublishVolume request: ")]
    assert full["level"] == "debug" and "volume_context" in full["msg"] and "secrets" not in full["msg"]
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for leak in (PASSWORD, basic, "Authorization"):
        assert leak not in output


def test_info_logs_one_compact_line_per_rpc(registry: str, tmp_path: Path, kubelet_root: Path) -> None:
    from artifacts import push_klaus

    plugin = push_klaus(registry, "logs/plugin:v1", PLUGIN_TREE, tmp_path / "push")
    with run_driver(tmp_path, registry, "bind") as d:
        request = publish_request(target_for(kubelet_root, "pod-1", "p"), {"reference": plugin.reference})
        d.publish(request)
        d.unpublish(unpublish_request(request))
    output = d.log.read_text()
    [publish] = [line for line in output.splitlines() if "NodePublishVolume" in line]
    assert re.search(
        rf" INFO oci-volume-csi: NodePublishVolume volume_id={request.volume_id} reference={re.escape(plugin.reference)} "
        rf"digest={plugin.digest} -> OK \(\d+\.\d ms\)$",
        publish,
    ), publish
    [unpublish] = [line for line in output.splitlines() if "NodeUnpublishVolume" in line]
    assert re.search(rf"NodeUnpublishVolume volume_id={request.volume_id} -> OK \(\d+\.\d ms\)$", unpublish)
    assert "volume_context" not in output and "target_path" not in output


def test_serve_logs_progress_at_info_for_a_pull_still_running(tmp_path: Path, kubelet_root: Path) -> None:
    from stub_registry import serve_stub, slow_image
    from test_restarts import big_layer

    layer = big_layer(4 << 20, seed=9)
    with serve_stub() as stub:
        reference = slow_image(stub, "slow/logged", layer, seconds=3)
        flags = ["--progress-interval", "0.5", "--log-format", "json"]
        with run_driver(tmp_path, stub.host, "bind", flags) as d:
            d.publish(publish_request(target_for(kubelet_root, "pod-1", "p"), {"reference": reference}))
    lines = [json.loads(line) for line in d.log.read_text().splitlines() if line.strip()]
    progress = [line for line in lines if line["msg"].startswith(f"pulling {reference} (sha256:")]
    assert len(progress) >= 3, progress
    assert all(line["level"] == "info" and line["total_bytes"] == len(layer) for line in progress)
    assert all(line["reference"] == reference and line["digest"].startswith("sha256:") for line in progress)
    done = [line["done_bytes"] for line in progress]
    assert done == sorted(done) and done[-1] > 0
    assert re.search(r": \d+\.\d MiB of 4\.0 MiB \(\d+%\), \d+\.\d [KM]iB/s, \d+ s$", progress[-1]["msg"])
