"""The commands for humans (issue 9), each run as ``python -m csi_driver ...`` the way a person
runs it, against the real ``serve`` process, a real registry and real mounts."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fixtures_tools as ft
from artifacts import PLUGIN_TREE, Pushed, push_klaus
from csi_driver.__main__ import _parser
from csi_driver.mounts import kernel
from driver import Driver, run_driver, walk
from kubelet import publish_request as kubelet_publish_request, target_for
from stub_registry import serve_stub, slow_image
from test_publish import assert_read_only_mount, expected_walk, stalled_registry  # noqa: F401 (a fixture)
from test_restarts import big_layer, fuse_pid


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "csi_driver", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def cli_json(*args: str) -> object:
    return json.loads(cli(*args, "--output", "json").stdout)


def on_terminal(*args: str) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal, as in a person's shell: (exit status, stdout, what the terminal showed)."""
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "csi_driver", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout = process.stdout.read()
    return process.wait(timeout=60), stdout, shown.decode(errors="replace")


@pytest.fixture(scope="module")
def driver(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    with run_driver(tmp_path_factory.mktemp("cli"), registry, "fuse") as d:
        yield d


@pytest.fixture(scope="module")
def plugin(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push_klaus(registry, "cli/gs-base:v0.6.0", PLUGIN_TREE, tmp_path_factory.mktemp("push"))


def endpoint(d: Driver) -> tuple[str, str]:
    return "--endpoint", f"unix://{d.socket}"


def state(d: Driver) -> tuple[str, str]:
    return "--state-dir", str(d.state_dir)


def test_publish_inspect_cache_ls_unpublish_and_gc(driver: Driver, plugin: Pushed, tmp_path: Path) -> None:
    target = tmp_path / "plugin"
    published = cli_json("publish", plugin.reference, str(target), "--pod", "team-a/agent-7", *endpoint(driver))
    volume_id = "csi-" + hashlib.sha256(str(target).encode()).hexdigest()
    assert published == {"volume_id": volume_id, "target": str(target), "reference": plugin.reference}
    assert_read_only_mount(target)
    assert walk(target) == expected_walk(PLUGIN_TREE)

    shown = cli_json("inspect", str(target), *state(driver))
    assert cli_json("inspect", volume_id, *state(driver)) == shown
    assert shown["volume_id"] == volume_id and shown["target"] == str(target)
    assert (shown["reference"], shown["digest"]) == (plugin.reference, plugin.digest)
    assert (shown["pod"], shown["mode"], shown["health"]) == ("team-a/agent-7", "fuse", "ok")
    assert shown["mounted_since"].endswith("Z")
    assert shown["entries"] == len(PLUGIN_TREE) + 1
    text = cli("inspect", str(target), *state(driver)).stdout
    assert f"digest:        {plugin.digest}" in text and "health:        ok" in text
    listed = cli("inspect", *state(driver)).stdout
    assert listed.startswith("HEALTH") and str(target) in listed

    [cached] = [d for d in cli_json("cache", "ls", *state(driver))["digests"] if d["digest"] == plugin.digest]
    assert cached["references"] == [plugin.reference] and cached["in_use"] == 1
    assert cached["bytes"] == sum(len(c) for c, _ in PLUGIN_TREE.values() if isinstance(c, bytes))
    assert plugin.digest in cli("cache", "ls", *state(driver)).stdout

    subprocess.run(["umount", "-l", str(target)], check=True)  # behind the driver's back
    assert cli_json("inspect", str(target), *state(driver))["health"] == "not mounted"
    view = driver.state_dir / "view" / plugin.digest
    subprocess.run(["mount", "--bind", "-o", "ro", str(view), str(target)], check=True)

    assert "unpublished" in cli("unpublish", str(target), *endpoint(driver), *state(driver)).stdout
    assert kernel.find_mount(str(target)) is None and not target.exists()
    assert all(v["target"] != str(target) for v in cli_json("inspect", *state(driver)))
    gc = cli_json("cache", "gc", *state(driver), "--grace", "0", "--cache-max-bytes", "1")
    assert plugin.digest in [t["digest"] for t in gc["removed"]] and gc["freed_bytes"] > 0
    assert all(d["digest"] != plugin.digest for d in cli_json("cache", "ls", *state(driver))["digests"])


def test_failures_are_one_line_with_the_code(driver: Driver, registry: str, tmp_path: Path) -> None:
    missing = cli("publish", f"{registry}/cli/missing:v1", str(tmp_path / "m"), *endpoint(driver), check=False)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("oci-volume-csi publish: the driver answered NOT_FOUND:")
    assert f"{registry}/cli/missing:v1" in missing.stderr and "Traceback" not in missing.stderr
    no_driver = cli("publish", f"{registry}/cli/missing:v1", str(tmp_path / "m"), "--endpoint", f"unix://{tmp_path}/none.sock", check=False)
    assert no_driver.returncode == 1 and "UNAVAILABLE: no driver socket" in no_driver.stderr
    unknown = cli("inspect", str(tmp_path / "m"), *state(driver), check=False)
    assert unknown.returncode == 1 and "NOT_FOUND: nothing is published" in unknown.stderr
    no_state = cli("cache", "ls", "--state-dir", str(tmp_path), check=False)
    assert no_state.returncode == 1 and "holds no driver state" in no_state.stderr


@pytest.fixture
def slow_registry() -> Iterator[str]:
    """A registry serving one 4 MiB image whose layer takes 6 s to arrive."""
    with serve_stub() as stub:
        yield slow_image(stub, "slow/big", big_layer(4 << 20, seed=8), seconds=6)


PULLING = r"pulling {}: \d+\.\d MiB of 4\.0 MiB \(\d+%\), \d+\.\d [KM]iB/s, \d+ s"


def test_publish_shows_the_pulls_bytes_percent_and_rate(slow_registry: str, tmp_path: Path) -> None:
    host = slow_registry.partition("/")[0]
    with run_driver(tmp_path / "slow", host, "bind") as d:
        with concurrent.futures.ThreadPoolExecutor() as pool:  # the same pull: the driver fetches it once
            piped = pool.submit(cli, "publish", slow_registry, str(tmp_path / "piped"), *endpoint(d))
            status, stdout, shown = on_terminal("publish", slow_registry, str(tmp_path / "terminal"), *endpoint(d))
        assert status == 0 and stdout.startswith(f"published {slow_registry}")
        assert re.search(PULLING.format(re.escape(slow_registry)), shown), shown
        [line, *_] = [line for line in piped.result().stderr.splitlines() if line.startswith("pulling")]
        assert re.fullmatch(PULLING.format(re.escape(slow_registry)), line), line  # no carriage return, no escape


def test_publish_waits_with_a_progress_line_on_a_terminal(
    registry: str, stalled_registry: str, tmp_path: Path  # noqa: F811 (a fixture)
) -> None:
    extra = ["--insecure-registry", stalled_registry, "--registry-timeout", "2"]
    with run_driver(tmp_path / "slow", registry, "bind", extra) as d:
        reference = f"{stalled_registry}/slow/plugin:v1"
        with concurrent.futures.ThreadPoolExecutor() as pool:  # each waits ~2 s on the registry
            piped = pool.submit(cli, "publish", reference, str(tmp_path / "piped"), *endpoint(d), check=False)
            status, stdout, shown = on_terminal("publish", reference, str(tmp_path / "terminal"), *endpoint(d))
        assert status == 1 and stdout == ""
        assert "waiting for the driver… 1 s" in shown
        assert "the driver answered UNAVAILABLE" in shown and stalled_registry in shown
        assert "UNAVAILABLE" in piped.result().stderr and "\r" not in piped.result().stderr


def test_unpublish_of_a_kubelet_volume_is_refused_and_forced_it_stays_gone_after_a_restart(
    registry: str, plugin: Pushed, tmp_path: Path, kubelet_root: Path
) -> None:
    kubelet_id = "csi-" + hashlib.sha256(b"pod-uid-1" + b"plugin").hexdigest()  # the kubelet's makeVolumeHandle
    request = kubelet_publish_request(
        target_for(kubelet_root, "pod-uid-1", "plugin"), {"reference": plugin.reference}, vol_id=kubelet_id,
        pod_name="agent-7", namespace="team-a", pod_uid="pod-uid-1",
    )  # fmt: skip
    target = request.target_path
    with run_driver(tmp_path / "first", registry, "bind") as d:
        d.publish(request)
        refused = cli("unpublish", target, *endpoint(d), *state(d), check=False)
        assert refused.returncode == 1 and refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert line.startswith("oci-volume-csi unpublish: FAILED_PRECONDITION: ")
        assert "team-a/agent-7" in line and "delete the pod" in line and "--force" in line
        assert kernel.is_mount_point(target)

        forced = cli_json("unpublish", target, "--force", *endpoint(d), *state(d))
        assert forced == {"volume_id": request.volume_id, "target": target, "forced": True}
        assert not kernel.is_mount_point(target)
        assert cli_json("inspect", *state(d)) == []
        state_dir = d.state_dir
    with run_driver(tmp_path / "first", registry, "bind") as d:  # the same state dir: nothing to re-bind
        assert d.state_dir == state_dir
        assert not kernel.is_mount_point(target) and cli_json("inspect", *state(d)) == []
        gc = cli_json("cache", "gc", *state(d), "--grace", "0", "--cache-max-bytes", "1")
        assert [t["digest"] for t in gc["removed"]] == [plugin.digest]


def test_unpublish_refuses_what_was_never_published_there(driver: Driver, tmp_path: Path) -> None:
    nothing = cli("unpublish", str(tmp_path), *endpoint(driver), *state(driver), check=False)
    assert nothing.returncode == 1 and "NOT_FOUND: nothing is published at" in nothing.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(foreign)], check=True)
    try:
        refused = cli("unpublish", str(foreign), *endpoint(driver), *state(driver), check=False)
        assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr and "--force" in refused.stderr
        assert kernel.is_mount_point(str(foreign))
    finally:
        subprocess.run(["umount", "-l", str(foreign)], check=False)


def test_inspect_reads_the_records_while_serve_is_down_and_sees_a_dead_view(
    registry: str, plugin: Pushed, tmp_path: Path
) -> None:
    target = tmp_path / "plugin"
    with run_driver(tmp_path / "down", registry, "fuse") as d:
        cli("publish", plugin.reference, str(target), *endpoint(d))
        d.process.send_signal(signal.SIGTERM)
        d.process.wait(timeout=15)
        assert cli_json("inspect", str(target), *state(d))["health"] == "ok"
        os.kill(fuse_pid(d), signal.SIGKILL)
        assert cli_json("inspect", str(target), *state(d))["health"] == "dead"
        assert "dead" in cli("inspect", *state(d)).stdout


# -- describe ---------------------------------------------------------------------------------


def describe(registry: str, reference: str, *flags: str, check: bool = True) -> tuple[int, dict]:
    result = cli("describe", reference, "--insecure-registry", registry, "--output", "json", *flags, check=check)
    return result.returncode, json.loads(result.stdout)


def test_describe_names_each_layers_rule_and_shows_what_the_mount_holds(
    driver: Driver, registry: str, tmp_path: Path
) -> None:
    mixed = ft.build_oras_mixed(registry, tmp_path / "mixed")
    status, report = describe(registry, mixed.reference)
    assert status == 0 and "error" not in report
    assert (report["digest"], report["manifest"]) == (mixed.digest, mixed.digest)
    assert (report["kind"], report["config_media_type"]) == ("OCI image manifest", ft.UNKNOWN_CONFIG)
    by_title = {layer["title"]: layer["rule"] for layer in report["layers"]}
    assert by_title == {"skills": 3, "agents": 1, "settings.json": 4, "CLAUDE.md": 4}
    assert report["volume"]["top_level"] == ["CLAUDE.md", "agents/", "settings.json", "skills/"]

    target = tmp_path / "mixed-target"
    cli("publish", mixed.reference, str(target), *endpoint(driver))
    try:
        mounted = {path: (kind, mode, uid, gid) for path, (kind, mode, uid, gid, _) in walk(target).items()}
    finally:
        cli("unpublish", str(target), *endpoint(driver), *state(driver))
    described = {e["path"]: (e["kind"], int(e["mode"], 8), e["uid"], e["gid"]) for e in report["volume"]["entries"]}
    assert described == mounted

    text = cli("describe", mixed.reference, "--insecure-registry", registry).stdout
    assert "RULE" in text and "extracted as skills/" in text and "a file: the blob as CLAUDE.md" in text
    assert re.search(r"^-rw-r----- +1000:1000 +11 B +agents/reviewer.md$", text, re.MULTILINE)


def test_describe_an_index_picks_the_node_platform_or_lists_the_others(registry: str) -> None:
    toolhive = ft.build_toolhive(registry)
    status, report = describe(registry, toolhive.reference)
    assert status == 0
    assert (report["kind"], report["artifact_type"]) == ("OCI image index", ft.TOOLHIVE_PLUGIN)
    assert report["platforms"] == ["linux/amd64", "linux/arm64"]
    assert report["platform"] == ft.node_platform() and report["manifest"] != report["digest"]
    assert [(layer["title"], layer["rule"]) for layer in report["layers"]] == [("plugin.tar.gz", 0)]  # an image
    assert report["layers"][0]["placement"].endswith("title ignored")
    assert sorted(e["path"] for e in report["volume"]["entries"] if e["kind"] == "file") == sorted(
        path for path, value in toolhive.expected.items() if value[0] == "file"
    )
    status, report = describe(registry, toolhive.reference, "--platform", "linux/s390x", check=False)
    assert status == 1 and "volume" not in report and "layers" not in report
    assert report["error"]["code"] == "NOT_FOUND" and "linux/amd64, linux/arm64" in report["error"]["message"]


def test_describe_shows_why_the_node_would_refuse_a_layer(registry: str, tmp_path: Path) -> None:
    fixture, bad = ft.build_unknown_media_type(registry, tmp_path / "unknown")
    status, report = describe(registry, fixture.reference, check=False)
    assert status == 1 and "volume" not in report
    assert [(layer["digest"], layer["rule"]) for layer in report["layers"]][1] == (bad, 5)
    assert report["error"]["code"] == "INVALID_ARGUMENT" and bad in report["error"]["message"]
    text = cli("describe", fixture.reference, "--insecure-registry", registry, check=False).stdout
    assert "the node would refuse this volume: INVALID_ARGUMENT" in text


def test_describe_shows_a_progress_line_on_a_terminal(stalled_registry: str) -> None:  # noqa: F811 (a fixture)
    reference = f"{stalled_registry}/slow/plugin:v1"
    status, stdout, shown = on_terminal(
        "describe", reference, "--insecure-registry", stalled_registry, "--registry-timeout", "2"
    )
    assert status == 1 and stdout == ""
    assert f"pulling {reference}… 1 s" in shown
    assert "oci-volume-csi describe: UNAVAILABLE: " in shown and stalled_registry in shown


def test_describe_shows_the_pulls_bytes_percent_and_rate(slow_registry: str) -> None:
    host = slow_registry.partition("/")[0]
    status, stdout, shown = on_terminal("describe", slow_registry, "--insecure-registry", host)
    assert status == 0 and "the volume holds 4 files (4.0 MiB)" in stdout
    assert re.search(PULLING.format(re.escape(slow_registry)), shown), shown


COMMANDS = [["serve"], ["fuse"], ["publish"], ["unpublish"], ["inspect"], ["describe"], ["cache"], ["cache", "ls"],
            ["cache", "gc"], ["convert"]]  # fmt: skip


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "top")
def test_help_at_every_level_describes_the_command_for_an_admin(command: list[str]) -> None:
    shown = cli(*command, "--help").stdout
    assert shown.startswith(f"usage: oci-volume-csi {' '.join(command)}".rstrip())
    description = shown.split("\n\n")[1]
    assert not description.startswith(("options:", "positional arguments:")), shown
    for internal in ("csi_driver", ".py", "DESIGN", "``"):
        assert internal not in shown
    assert "--log-format {text,json}" in shown
    if command in [["publish"], ["unpublish"], ["inspect"], ["describe"], ["cache", "ls"], ["cache", "gc"]]:
        assert "--output {table,json}" in shown


# -- usage ------------------------------------------------------------------------------------

NODE = ("--node-id", "node-1")
REF = "registry.example/cli/x:v1"
BAD_VALUES = [
    (["--log-level", "LOUD", "serve", *NODE], "--log-level: 'LOUD'"),
    (["serve", *NODE, "--log-level", "LOUD"], "--log-level: 'LOUD'"),
    (["serve", *NODE, "--log-format", "yaml"], "--log-format: invalid choice: 'yaml'"),
    (["serve"], "required: --node-id"),
    (["serve", "--node-id", ""], "--node-id: ''"),
    (["serve", *NODE, "--endpoint", "/csi/csi.sock"], "--endpoint: '/csi/csi.sock'"),
    (["serve", *NODE, "--endpoint", "tcp://127.0.0.1:10000"], "--endpoint: 'tcp://127.0.0.1:10000'"),
    (["serve", *NODE, "--state-dir", "/etc/hostname"], "--state-dir: '/etc/hostname' is not a directory"),
    (["serve", *NODE, "--mode", "loop"], "--mode: invalid choice: 'loop'"),
    (["serve", *NODE, "--driver-name=-oci-"], "--driver-name: '-oci-'"),
    (["serve", *NODE, "--driver-name", "d" * 64], "--driver-name: 'ddd"),
    (["serve", *NODE, "--insecure-registry", "http://host:5000"], "without one: 'host:5000'"),
    (["serve", *NODE, "--insecure-registry", "host:5000/v2"], "--insecure-registry: 'host:5000/v2'"),
    (["serve", *NODE, "--registry-config-dir", "/etc/hostname"], "--registry-config-dir: '/etc/hostname'"),
    (["serve", *NODE, "--platform", "bad"], "--platform: platform 'bad'"),
    (["serve", *NODE, "--platform", "linux/"], "--platform: platform 'linux/'"),
    (["serve", *NODE, "--registry-timeout", "0"], "--registry-timeout: '0'"),
    (["serve", *NODE, "--registry-timeout", "soon"], "--registry-timeout: 'soon'"),
    (["serve", *NODE, "--pull-timeout=-5"], "--pull-timeout: '-5'"),
    (["serve", *NODE, "--pull-timeout", "inf"], "--pull-timeout: 'inf'"),
    (["serve", *NODE, "--max-manifest-bytes", "4 furlongs"], "--max-manifest-bytes: '4 furlongs'"),
    (["serve", *NODE, "--max-manifest-bytes", "0"], "--max-manifest-bytes: '0'"),
    (["serve", *NODE, "--max-layers", "0"], "--max-layers: '0'"),
    (["serve", *NODE, "--max-layers", "1.5"], "--max-layers: '1.5'"),
    (["serve", *NODE, "--max-entries", "many"], "--max-entries: 'many'"),
    (["serve", *NODE, "--max-unpacked-bytes=-1GiB"], "--max-unpacked-bytes: '-1GiB'"),
    (["serve", *NODE, "--cache-max-bytes", "lots"], "--cache-max-bytes: 'lots'"),
    (["serve", *NODE, "--cache-min-free", "200%"], "--cache-min-free: '200%'"),
    (["serve", *NODE, "--cache-min-free=-5%"], "--cache-min-free: '-5%'"),
    (["serve", *NODE, "--cache-min-free", "ten%"], "--cache-min-free: 'ten%'"),
    (["serve", *NODE, "--metrics-address", "9810"], "--metrics-address: '9810'"),
    (["serve", *NODE, "--metrics-address", ":99999"], "--metrics-address: ':99999'"),
    (["serve", *NODE, "--progress-interval", "0"], "--progress-interval: '0'"),
    (["serve", *NODE, "--image-credential-provider-config", "/etc/k/c.yaml"], "go together"),
    (["serve", *NODE, "--docker-config", "/etc"], "--docker-config: '/etc' is a directory"),
    (["serve", *NODE, "--image-credential-provider-config", "/etc", "--image-credential-provider-bin-dir", "/bin"],
     "--image-credential-provider-config: '/etc' is a directory"),
    (["serve", *NODE, "--image-credential-provider-config", "/etc/hostname", "--image-credential-provider-bin-dir",
      "/etc/hostname"], "--image-credential-provider-bin-dir: '/etc/hostname' is not a directory"),
    (["unpublish", "/mnt/x", "--state-dir", "/etc/hostname"], "--state-dir: '/etc/hostname'"),
    (["unpublish", "/mnt/x", "--endpoint", "unix://"], "--endpoint: 'unix://'"),
    (["serve", *NODE, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["fuse", "--state-dir", "/etc/hostname"], "--state-dir: '/etc/hostname'"),
    (["cache", "gc", "--grace=-1"], "--grace: '-1'"),
    (["cache", "gc", "--cache-min-free", "200%"], "--cache-min-free: '200%'"),
    (["cache", "gc", "--cache-max-bytes", "1 ton"], "--cache-max-bytes: '1 ton'"),
    (["cache", "gc", "--output", "yaml"], "--output: invalid choice: 'yaml'"),
    (["cache", "ls", "--state-dir", "/etc/hostname"], "--state-dir: '/etc/hostname'"),
    (["cache", "prune"], "invalid choice: 'prune'"),
    (["publish", "Registry.Example/Bad", "/mnt/x"], "REF: invalid image reference 'Registry.Example/Bad'"),
    (["publish", REF], "required: TARGET"),
    (["publish", REF, "/mnt/x", "--pull-policy", "Sometimes"], "--pull-policy: invalid choice: 'Sometimes'"),
    (["publish", REF, "/mnt/x", "--platform", "amd64"], "--platform: platform 'amd64'"),
    (["publish", REF, "/mnt/x", "--pod", "agent-7"], "--pod: 'agent-7'"),
    (["publish", REF, "/mnt/x", "--timeout", "0"], "--timeout: '0'"),
    (["publish", REF, "/mnt/x", "--endpoint", "localhost:10000"], "--endpoint: 'localhost:10000'"),
    (["unpublish", "/mnt/x", "--timeout", "never"], "--timeout: 'never'"),
    (["inspect", "--state-dir", "/etc/hostname"], "--state-dir: '/etc/hostname'"),
    (["describe", f"{REF}@sha256:123"], "REF: invalid image reference"),
    (["describe", REF, "--insecure-registry", "https://registry.example"], "without one: 'registry.example'"),
    (["describe", REF, "--max-layers", "none"], "--max-layers: 'none'"),
    (["describe", REF, "--platform", "linux/arm/v7/x"], "--platform: platform 'linux/arm/v7/x'"),
    (["convert", "--driver-name", "bad_name"], "--driver-name: 'bad_name'"),
]


COMMAND_WORDS = {"serve", "fuse", "cache", "gc", "ls", "publish", "unpublish", "inspect", "describe", "convert"}


@pytest.mark.parametrize(("argv", "named"), BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_flag_value_is_a_one_line_usage_error(argv: list[str], named: str) -> None:
    result = cli(*argv, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    command = " ".join(["oci-volume-csi", *(word for word in argv[:2] if word in COMMAND_WORDS)])
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{command}: ") and named in line, line
    assert line.endswith(f"(see {command} --help)")


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--log-level", "debug", "cache", "gc"],
        ["cache", "gc", "--log-format", "json", "--log-level", "debug"],
        ["--log-format", "json", "cache", "-v", "gc"],
    ],
    ids=["before", "after", "between"],
)
def test_logging_flags_work_before_or_after_the_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    level = "DEBUG" if args.verbose else args.log_level
    assert (args.log_format, level) == ("json", "DEBUG")
    assert args.prog == "oci-volume-csi cache gc"
