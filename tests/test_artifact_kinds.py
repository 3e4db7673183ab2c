"""Every artifact kind mounts as its own tools lay it out (issue 4; docs/layout-rules.md "What appears
in the volume").

Each kind is made by the tool its users use (``fixtures_tools.py`` says which), pushed to the
real registry, published through the real ``serve`` process in every data plane (``bind``,
``fuse`` and ``erofs``), and the mounted tree is compared name by name with what was pushed: bytes,
modes (setuid/setgid dropped), symlink targets, uid/gid. The expected trees come from the
sources (the pushed directory, or ``umoci raw unpack`` of the pushed image), never from the
driver. The fixtures are built once per session and the drivers run once per module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

import fixtures_tools as ft
from csi_driver.content.store import Store
from csi_driver.layout import rules
from csi_driver.layout.tree import blob_relpath, decoded_relpath
from csi_driver.mounts import kernel
from csi_driver.views import erofs, erofsmount
from driver import Driver, run_driver, walk
from kubelet import publish_request, target_for, unpublish_request

MODES = ["bind", "fuse", "erofs"]


# -- drivers and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def drivers(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Driver]]:
    """One real ``serve`` per data plane, shared by the module (each test uses its own targets)."""
    with contextlib.ExitStack() as stack:
        yield {mode: stack.enter_context(run_driver(tmp_path_factory.mktemp(f"kinds-{mode}"), registry, mode))
               for mode in MODES}  # fmt: skip


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


def published_tree(
    driver: Driver, fixture: ft.Fixture, kubelet_root: Path, pod: str, look: Callable[[Path], object] = walk
) -> object:
    """Publish ``fixture`` as the kubelet would, ``look`` at the mount (walk it), unpublish; the
    target is gone after."""
    target = target_for(kubelet_root, pod, fixture.name.replace("_", "-"))
    request = publish_request(target, {"reference": fixture.reference})
    driver.publish(request)
    try:
        info = kernel.find_mount(str(target))
        assert info is not None, f"{target} is not a mount point"
        assert {"ro", "nosuid", "nodev"} <= info.options, info.options
        return look(target)
    finally:
        driver.unpublish(unpublish_request(request))
        assert kernel.find_mount(str(target)) is None
        assert not target.exists()


def describe(value: tuple) -> str:
    kind, mode, uid, gid, content = value
    shown = content if isinstance(content, str) else (content[:40] + (b"..." if len(content) > 40 else b""))
    return f"{kind} {mode:04o} {uid}:{gid} {shown!r}"


def assert_same_tree(seen: ft.Walk, expected: ft.Walk, what: str) -> None:
    """Compare two walks name by name, with a short readable report of every difference."""
    problems = [f"missing {name}: want {describe(expected[name])}" for name in sorted(expected.keys() - seen.keys())]
    problems += [f"unexpected {name}: {describe(seen[name])}" for name in sorted(seen.keys() - expected.keys())]
    problems += [
        f"differs {name}: got {describe(seen[name])}, want {describe(expected[name])}"
        for name in sorted(seen.keys() & expected.keys())
        if seen[name] != expected[name]
    ]
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


def pushed_manifest(fixture: ft.Fixture) -> dict:
    """The manifest (or index) the registry holds for ``fixture``, by its digest."""
    registry, _, repo_tag = fixture.reference.partition("/")
    accept = f"{ft.OCI_MANIFEST}, {ft.OCI_INDEX}, {ft.DOCKER_MANIFEST}, {ft.DOCKER_LIST}"
    return ft.fetch_manifest(registry, repo_tag.rpartition(":")[0], fixture.digest, accept)


def layer_shapes(fixture: ft.Fixture, manifest: dict | None = None) -> list[tuple[str, str | None, str | None]]:
    """(media type, title, unpack annotation) of each layer of ``fixture``'s manifest (or of ``manifest``)."""
    return [
        (layer["mediaType"], layer.get("annotations", {}).get(ft.TITLE), layer.get("annotations", {}).get(ft.UNPACK))
        for layer in (manifest or pushed_manifest(fixture))["layers"]
    ]


def platform_manifests(fixture: ft.Fixture) -> list[dict]:
    """The manifests ``fixture``'s index names, in its order."""
    registry, _, repo_tag = fixture.reference.partition("/")
    repo = repo_tag.rpartition(":")[0]
    return [ft.fetch_manifest(registry, repo, entry["digest"], ft.OCI_MANIFEST)
            for entry in pushed_manifest(fixture)["manifests"]]  # fmt: skip


def assert_toolhive_shape(fixture: ft.Fixture, artifact_type: str, title: str | None) -> None:
    """toolhive-core's packager: an index of linux/amd64 and linux/arm64 image manifests, its
    ``artifactType`` on the index and on each manifest, one ``tar+gzip`` layer shared by both."""
    index, manifests = pushed_manifest(fixture), platform_manifests(fixture)
    assert index["artifactType"] == artifact_type
    platforms = [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]
    assert [m["platform"] for m in index["manifests"]] == platforms
    assert [(m["artifactType"], m["config"]["mediaType"]) for m in manifests] == [(artifact_type, ft.OCI_CONFIG)] * 2
    assert manifests[0]["config"] != manifests[1]["config"] and manifests[0]["layers"] == manifests[1]["layers"]
    assert layer_shapes(fixture, manifests[0]) == [(ft.OCI_TAR_GZIP, title, None)]


def check_kind(drivers: dict[str, Driver], mode: str, fixture: ft.Fixture, kubelet_root: Path) -> ft.Walk:
    seen = published_tree(drivers[mode], fixture, kubelet_root, f"pod-{mode}")
    assert_same_tree(seen, fixture.expected, f"{fixture.name} ({fixture.made_with}) in {mode} mode")
    return seen


# -- fixtures, once per session ---------------------------------------------------------------


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kinds-fixtures")


@pytest.fixture(scope="session")
def oras_file_push(registry: str, work: Path) -> ft.Fixture:
    return ft.build_oras_file_push(registry, work / "oras-files")


@pytest.fixture(scope="session")
def oras_directory_push(registry: str, work: Path) -> ft.Fixture:
    return ft.build_oras_directory_push(registry, work / "oras-dir")


@pytest.fixture(scope="session")
def oras_directory_unpack(registry: str, work: Path) -> ft.Fixture:
    return ft.build_oras_directory_unpack(registry, work / "oras-dir-unpack")


@pytest.fixture(scope="session")
def oras_files_and_directories(registry: str, work: Path) -> ft.Fixture:
    return ft.build_oras_mixed(registry, work / "oras-mixed")


@pytest.fixture(scope="session")
def skill(registry: str, work: Path) -> ft.Fixture:
    return ft.build_skill(registry, work / "skill")


@pytest.fixture(scope="session")
def klaus_plugin_oras_cli(registry: str, work: Path) -> ft.Fixture:
    return ft.build_klaus_oras_cli(registry, work / "klaus-cli")


@pytest.fixture(scope="session")
def klaus_media_type_titled(registry: str, work: Path) -> ft.Fixture:
    return ft.build_klaus_hand(registry, work / "klaus-titled", titled=True)


@pytest.fixture(scope="session")
def klaus_media_type_untitled(registry: str, work: Path) -> ft.Fixture:
    return ft.build_klaus_hand(registry, work / "klaus-untitled", titled=False)


@pytest.fixture(scope="session")
def toolhive_plugin(registry: str) -> ft.Fixture:
    return ft.build_toolhive(registry)


@pytest.fixture(scope="session")
def toolhive_skill(registry: str) -> ft.Fixture:
    return ft.build_toolhive_skill(registry)


@pytest.fixture(scope="session")
def toolchain(work: Path) -> tuple[ft.Layout, ft.Walk]:
    """The multi-layer umoci image and umoci's own extraction of it."""
    layout = ft.build_toolchain_layout(work / "toolchain")
    return layout, layout.reference_tree("toolchain", work / "toolchain" / "reference")


@pytest.fixture(scope="session")
def oci_image(registry: str, toolchain: tuple[ft.Layout, ft.Walk]) -> ft.Fixture:
    layout, reference = toolchain
    digest = ft.skopeo_push(layout, "toolchain", registry, "kinds/toolchain:oci")
    return ft.Fixture("oci_image", f"{registry}/kinds/toolchain:oci", reference,
                      "umoci (5 layers: repack, repack, insert --opaque, insert --whiteout, insert) + skopeo copy",
                      digest)  # fmt: skip


@pytest.fixture(scope="session")
def docker_schema2_image(registry: str, toolchain: tuple[ft.Layout, ft.Walk]) -> ft.Fixture:
    layout, reference = toolchain
    digest = ft.skopeo_push(layout, "toolchain", registry, "kinds/toolchain:v2s2", "--format", "v2s2")
    return ft.Fixture("docker_schema2_image", f"{registry}/kinds/toolchain:v2s2", reference,
                      "umoci + skopeo copy --format v2s2", digest)  # fmt: skip


@pytest.fixture(scope="session")
def zstd_image(registry: str, toolchain: tuple[ft.Layout, ft.Walk], work: Path) -> ft.Fixture:
    layout, reference = toolchain
    zstd = ft.skopeo_recompress(layout, "toolchain", work / "toolchain-zstd",
                                "--dest-compress", "--dest-compress-format", "zstd")  # fmt: skip
    digest = ft.skopeo_push(zstd, "toolchain", registry, "kinds/toolchain-zstd:v1")
    return ft.Fixture("zstd_image", f"{registry}/kinds/toolchain-zstd:v1", reference,
                      "umoci + skopeo copy --dest-compress-format zstd (oci → oci → registry)", digest)  # fmt: skip


@pytest.fixture(scope="session")
def layer_compressions(registry: str, toolchain: tuple[ft.Layout, ft.Walk]) -> ft.Fixture:
    layout, reference = toolchain
    return ft.build_layer_compressions(registry, layout, reference)


@pytest.fixture(scope="session")
def platforms(work: Path) -> tuple[ft.Layout, dict[str, ft.Walk]]:
    return ft.build_platform_layout(work / "platforms")


@pytest.fixture(scope="session")
def oci_index(registry: str, platforms: tuple[ft.Layout, dict[str, ft.Walk]]) -> ft.Fixture:
    layout, trees = platforms
    digest = ft.skopeo_push(layout, "multi", registry, "kinds/multiarch:oci", "--all")
    return ft.Fixture("oci_index", f"{registry}/kinds/multiarch:oci", ft.for_node(trees),
                      "umoci (two platforms) + skopeo copy --all", digest)  # fmt: skip


@pytest.fixture(scope="session")
def docker_manifest_list(registry: str, platforms: tuple[ft.Layout, dict[str, ft.Walk]]) -> ft.Fixture:
    layout, trees = platforms
    digest = ft.skopeo_push(layout, "multi", registry, "kinds/multiarch:v2s2", "--all", "--format", "v2s2")
    return ft.Fixture("docker_manifest_list", f"{registry}/kinds/multiarch:v2s2", ft.for_node(trees),
                      "umoci (two platforms) + skopeo copy --all --format v2s2", digest)  # fmt: skip


MOUNTABLE = [
    "oras_file_push", "oras_directory_push", "oras_directory_unpack", "oras_files_and_directories", "skill",
    "klaus_plugin_oras_cli", "klaus_media_type_titled", "klaus_media_type_untitled", "toolhive_plugin",
    "toolhive_skill", "oci_image", "docker_schema2_image", "zstd_image", "layer_compressions", "oci_index",
    "docker_manifest_list",
]  # fmt: skip


# -- one test per kind ------------------------------------------------------------------------


def test_oras_file_push(drivers, mode: str, oras_file_push: ft.Fixture, kubelet_root: Path) -> None:
    """Titled layers are files at their titles, 0644, even a real ``.tar.gz`` typed ``…tar+gzip``."""
    assert layer_shapes(oras_file_push) == [
        (ft.OCI_TAR, "notes.txt", None), ("application/vnd.example.data.v1", "data.bin", None),
        (ft.OCI_TAR, "bundle.tar.gz", None), (ft.OCI_TAR_GZIP, "dist.tar.gz", None),
        ("text/markdown", "docs/guide.md", None),
    ]  # fmt: skip
    assert pushed_manifest(oras_file_push)["config"]["mediaType"] == ft.UNKNOWN_CONFIG
    seen = check_kind(drivers, mode, oras_file_push, kubelet_root)
    assert seen["dist.tar.gz"][0] == "file" and seen["docs"][0] == "dir"


def test_oras_directory_push(drivers, mode: str, oras_directory_push: ft.Fixture, kubelet_root: Path) -> None:
    """oras-python's directory push (titled ``…tar+gzip``, entries under the title) mounts as ``<title>/…``."""
    assert layer_shapes(oras_directory_push) == [(ft.OCI_TAR_GZIP, "toolbox", None)]
    assert pushed_manifest(oras_directory_push)["config"]["mediaType"] == ft.OCI_EMPTY
    seen = check_kind(drivers, mode, oras_directory_push, kubelet_root)
    assert seen["toolbox/bin/run"][1] == 0o755  # pushed 4755: setuid dropped
    assert seen["toolbox/private/token"][2:4] == (1000, 1000)


def test_oras_directory_push_with_unpack_annotation(
    drivers, mode: str, oras_directory_unpack: ft.Fixture, kubelet_root: Path
) -> None:
    assert layer_shapes(oras_directory_unpack) == [(ft.OCI_TAR_GZIP, "toolbox", "true")]
    check_kind(drivers, mode, oras_directory_unpack, kubelet_root)


def test_oras_files_and_directories_in_one_artifact(
    drivers, mode: str, oras_files_and_directories: ft.Fixture, kubelet_root: Path
) -> None:
    assert layer_shapes(oras_files_and_directories) == [
        (ft.OCI_TAR_GZIP, "skills", None), (ft.OCI_TAR_GZIP, "agents", "true"),
        ("application/json", "settings.json", None), (ft.OCI_TAR, "CLAUDE.md", None),
    ]  # fmt: skip
    check_kind(drivers, mode, oras_files_and_directories, kubelet_root)


def test_skill(drivers, mode: str, skill: ft.Fixture, kubelet_root: Path) -> None:
    seen = check_kind(drivers, mode, skill, kubelet_root)
    assert seen["cluster-ops/SKILL.md"][4].startswith(b"---\nname: cluster-ops")


def test_klaus_plugin_pushed_like_the_oras_cli(
    drivers, mode: str, klaus_plugin_oras_cli: ft.Fixture, kubelet_root: Path
) -> None:
    """Titled ``plugin.tar.gz``, entries ``./…``: the plugin directory, not a file."""
    assert layer_shapes(klaus_plugin_oras_cli) == [(ft.KLAUS_PLUGIN_CONTENT, "plugin.tar.gz", None)]
    seen = check_kind(drivers, mode, klaus_plugin_oras_cli, kubelet_root)
    assert "plugin.tar.gz" not in seen and seen[".claude-plugin/plugin.json"][0] == "file"


def test_klaus_media_type_titled(drivers, mode: str, klaus_media_type_titled: ft.Fixture, kubelet_root: Path) -> None:
    assert layer_shapes(klaus_media_type_titled) == [(ft.KLAUS_PLUGIN_CONTENT, "gs-platform", None)]
    seen = check_kind(drivers, mode, klaus_media_type_titled, kubelet_root)
    assert "gs-platform" not in seen


def test_klaus_media_type_untitled(
    drivers, mode: str, klaus_media_type_untitled: ft.Fixture, kubelet_root: Path
) -> None:
    assert layer_shapes(klaus_media_type_untitled) == [(ft.KLAUS_PLUGIN_CONTENT, None, None)]
    assert "mediaType" not in pushed_manifest(klaus_media_type_untitled)
    check_kind(drivers, mode, klaus_media_type_untitled, kubelet_root)


def test_toolhive_plugin_mounts_as_the_plugin_directory_not_as_plugin_tar_gz(
    drivers, mode: str, toolhive_plugin: ft.Fixture, kubelet_root: Path
) -> None:
    """Its layer is titled ``plugin.tar.gz``, but an image config makes it an image: unpacked."""
    assert_toolhive_shape(toolhive_plugin, ft.TOOLHIVE_PLUGIN, "plugin.tar.gz")
    seen = check_kind(drivers, mode, toolhive_plugin, kubelet_root)
    assert "plugin.tar.gz" not in seen and seen[".claude-plugin/plugin.json"][0] == "file"
    assert seen["scripts/scan.sh"][1] == 0o755 and seen["scripts"] == ("dir", 0o755, 0, 0, b"")


def test_toolhive_skill_mounts_as_the_skill_directory(
    drivers, mode: str, toolhive_skill: ft.Fixture, kubelet_root: Path
) -> None:
    assert_toolhive_shape(toolhive_skill, ft.TOOLHIVE_SKILL, None)
    seen = check_kind(drivers, mode, toolhive_skill, kubelet_root)
    assert seen["SKILL.md"][4].startswith(b"---\nname: cluster-ops")


def test_oci_image_built_with_umoci(drivers, mode: str, oci_image: ft.Fixture, kubelet_root: Path) -> None:
    """Whiteouts, an opaque dir, file↔dir and dir→symlink across layers, hardlinks, absolute
    symlinks, owners, setuid dropped, FIFOs and devices left out: as umoci extracts it."""
    assert [shape[0] for shape in layer_shapes(oci_image)] == [ft.OCI_TAR_GZIP] * 5
    seen = check_kind(drivers, mode, oci_image, kubelet_root)
    assert "etc/obsolete.conf" not in seen and "home/dev/.profile" not in seen
    assert seen["srv/data"] == ("symlink", 0, 0, 0, "/mnt/data")
    assert seen["bin/sh"] == ("symlink", 0, 0, 0, "/bin/busybox")
    assert seen["bin/ls"][0] == "dir" and seen["opt/was-a-dir"][0] == "file" and seen["opt/was-a-file"][0] == "dir"
    assert sorted(n for n in seen if n.startswith("usr/lib/toolchain/")) == ["usr/lib/toolchain/libnew.so"]
    assert seen["usr/bin/passwd"][1] == 0o755 and seen["usr/bin/wall"][1] == 0o755
    assert seen["tmp"][1] == 0o1777
    assert "etc/initctl" not in seen and "etc/null" not in seen
    assert seen["bin/busybox.hard"] == seen["bin/busybox"]


def test_docker_schema2_image(
    registry: str, drivers, mode: str, docker_schema2_image: ft.Fixture, kubelet_root: Path
) -> None:
    manifest = ft.fetch_manifest(registry, "kinds/toolchain", "v2s2", ft.DOCKER_MANIFEST)
    assert manifest["mediaType"] == ft.DOCKER_MANIFEST
    assert {layer["mediaType"] for layer in manifest["layers"]} == {ft.DOCKER_LAYER}
    check_kind(drivers, mode, docker_schema2_image, kubelet_root)


def test_zstd_image_recompressed_by_skopeo(
    registry: str, drivers, mode: str, zstd_image: ft.Fixture, kubelet_root: Path
) -> None:
    manifest = ft.fetch_manifest(registry, "kinds/toolchain-zstd", "v1", ft.OCI_MANIFEST)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {ft.OCI_TAR_ZSTD}
    check_kind(drivers, mode, zstd_image, kubelet_root)


def test_layer_compressions_and_media_types(
    drivers, mode: str, layer_compressions: ft.Fixture, kubelet_root: Path
) -> None:
    """tar, tar+zstd, nondistributable tar+gzip, Docker rootfs.diff, multi-member gzip, and
    directories created implicitly by deeper entries (0755, root-owned)."""
    assert [shape[0] for shape in layer_shapes(layer_compressions)] == [
        ft.OCI_TAR, ft.OCI_TAR_ZSTD, ft.OCI_NONDIST_GZIP, ft.DOCKER_LAYER, ft.OCI_TAR_GZIP, ft.OCI_TAR_ZSTD,
    ]  # fmt: skip
    check_kind(drivers, mode, layer_compressions, kubelet_root)


def test_oci_index_with_two_platforms(
    registry: str, drivers, mode: str, oci_index: ft.Fixture, kubelet_root: Path
) -> None:
    index = ft.fetch_manifest(registry, "kinds/multiarch", "oci", ft.OCI_INDEX)
    assert index["mediaType"] == ft.OCI_INDEX and len(index["manifests"]) == 2
    seen = check_kind(drivers, mode, oci_index, kubelet_root)
    assert seen["etc/arch"][4] == ft.node_platform().split("/")[1].encode() + b"\n"


def test_docker_manifest_list_with_two_platforms(
    registry: str, drivers, mode: str, docker_manifest_list: ft.Fixture, kubelet_root: Path
) -> None:
    index = ft.fetch_manifest(registry, "kinds/multiarch", "v2s2", ft.DOCKER_LIST)
    assert index["mediaType"] == ft.DOCKER_LIST
    assert {m["mediaType"] for m in index["manifests"]} == {ft.DOCKER_MANIFEST}
    seen = check_kind(drivers, mode, docker_manifest_list, kubelet_root)
    assert seen["etc/arch"][4] == ft.node_platform().split("/")[1].encode() + b"\n"


def test_unknown_layer_media_type_is_refused(
    registry: str, drivers, mode: str, work: Path, kubelet_root: Path
) -> None:
    fixture, bad_digest = ft.build_unknown_media_type(registry, work / f"unknown-{mode}")
    target = target_for(kubelet_root, f"pod-{mode}", "unknown")
    with pytest.raises(grpc.RpcError) as excinfo:
        drivers[mode].publish(publish_request(target, {"reference": fixture.reference}))
    err = excinfo.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert bad_digest in err.details() and "application/x-unknown" in err.details()
    assert kernel.find_mount(str(target)) is None
    assert not target.exists()


# -- every data plane agrees ------------------------------------------------------------------

Stats = dict[str, tuple[int, int, int]]


def times_and_links(root: Path) -> Stats:
    """Every name below ``root`` (and the root, as ``.``) → (st_mtime_ns, st_nlink, how many names
    of the tree share its inode)."""
    seen: dict[str, os.stat_result] = {".": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            seen[str(path.relative_to(root))] = path.lstat()
    names: dict[int, int] = {}
    for st in seen.values():
        names[st.st_ino] = names.get(st.st_ino, 0) + 1
    return {name: (st.st_mtime_ns, st.st_nlink, names[st.st_ino]) for name, st in seen.items()}


def look_at_volume(target: Path) -> tuple[ft.Walk, Stats, str]:
    info = kernel.find_mount(str(target))
    assert info is not None
    return walk(target), times_and_links(target), info.fs_type


def test_every_view_presents_identical_trees_for_every_kind(
    request: pytest.FixtureRequest, drivers, kubelet_root: Path
) -> None:
    """Bytes, modes, owners, symlink targets, mtimes and link counts are the same in every view:
    a directory counts 2 + its subdirectories (the volume's root too), and a layer's hardlinks
    are one inode whose ``st_nlink`` is its number of names, in bind (``os.link``), fuse (one
    node) and erofs (one inode) alike; every other file is an inode of its own."""
    for name in MOUNTABLE:
        fixture: ft.Fixture = request.getfixturevalue(name)
        seen = {mode: published_tree(drivers[mode], fixture, kubelet_root, f"pod-same-{mode}", look_at_volume)
                for mode in MODES}  # fmt: skip
        trees = {mode: tree for mode, (tree, _, _) in seen.items()}
        stats = {mode: stat for mode, (_, stat, _) in seen.items()}
        assert trees["bind"], f"{name}: the volume is empty"
        assert {mode: fs_type for mode, (_, _, fs_type) in seen.items()}["erofs"] == "erofs", name
        for mode in ("fuse", "erofs"):
            assert_same_tree(trees[mode], trees["bind"], f"{name}: {mode} view against bind view")
            assert stats[mode] == stats["bind"], f"{name}: (mtime, st_nlink, names of the inode) in the {mode} view"
        for path, kind in ((n, v[0]) for n, v in {".": ("dir",), **trees["bind"]}.items()):
            _, links, names = stats["bind"][path]
            if kind == "dir":
                parent = "" if path == "." else path
                subdirs = sum(1 for other, v in trees["bind"].items() if v[0] == "dir" and os.path.dirname(other) == parent)
                assert (links, names) == (2 + subdirs, 1), f"{name}: {path}"
            else:
                assert links == names, f"{name}: {path} has {links} links and {names} names in the volume"
        if name in ("oci_image", "docker_schema2_image", "zstd_image"):  # umoci's layers hold two hardlinks
            assert [stats["bind"][path][1:] for path in ("bin/busybox.hard", "etc/hostname.hard")] == [(2, 2)] * 2, name


def test_oci_image_over_loop_devices_is_the_file_backed_erofs_tree(
    registry: str, drivers, oci_image: ft.Fixture, kubelet_root: Path, tmp_path: Path
) -> None:
    """The erofs view as kernels before 6.12 get it (the image and each of the five layer tars on a
    loop device of its own): the same names, bytes, modes, owners, mtimes and link counts."""
    with run_driver(tmp_path, registry, "erofs", env={erofsmount.FORCE_BACKING: "loop"}) as loop_driver:
        over_loops = published_tree(loop_driver, oci_image, kubelet_root, "pod-loop", look_at_volume)
        (digest,) = Store(loop_driver.state_dir).committed_digests()
        info = kernel.find_mount(str(erofs.mount_dir(loop_driver.state_dir, digest)))
        assert info is not None and erofsmount.loop_backing_file(info.source) == str(erofs.image_path(loop_driver.state_dir, digest))
    file_backed = published_tree(drivers["erofs"], oci_image, kubelet_root, "pod-file", look_at_volume)
    assert_same_tree(over_loops[0], oci_image.expected, "oci image over loop devices")
    assert over_loops == file_backed


# -- the store keeps each layer once ----------------------------------------------------------


def image_manifests(fixture: ft.Fixture) -> list[dict]:
    """The image manifests of ``fixture``: its own, or every one its index names."""
    top = pushed_manifest(fixture)
    return platform_manifests(fixture) if "manifests" in top else [top]


def kept(driver: Driver, digest: str) -> tuple[bool, bool]:
    """(the blob as served is stored, its inflated tar is stored) in ``driver``'s state dir."""
    return (driver.state_dir / blob_relpath(digest)).is_file(), (driver.state_dir / decoded_relpath(digest)).is_file()


def assert_stored_bytes_are_the_files(driver: Driver) -> None:
    """What ``cache ls`` and the collector count is what ``blobs/`` and ``layers/`` hold."""
    files = [*(driver.state_dir / "blobs" / "sha256").iterdir(), *(driver.state_dir / "layers" / "sha256").iterdir()]
    assert Store(driver.state_dir).stored_bytes() == sum(f.stat().st_size for f in files)


@pytest.mark.parametrize("kind", ["toolhive_plugin", "oci_image", "zstd_image", "klaus_plugin_oras_cli", "oras_files_and_directories"])
def test_a_compressed_layer_is_kept_once_as_its_tar(
    request: pytest.FixtureRequest, drivers, mode: str, kind: str, kubelet_root: Path
) -> None:
    """Layers placed by rules 0 to 2 (an image's, a Klaus plugin's, an ORAS directory's) are read
    only as their inflated tar: the store keeps that alone, never ``blobs/sha256/<layer hex>``,
    and every view serves the right bytes from it. (``oras_files_and_directories`` has a rule-1
    layer, and a rule-3 one, which keeps its blob; ``oras_directory_unpack`` is not here, because
    oras-python packs its directory into the very blob ``oras_directory_push`` places by rule 3.)"""
    fixture: ft.Fixture = request.getfixturevalue(kind)
    check_kind(drivers, mode, fixture, kubelet_root)
    layers = {
        layer["digest"] for m in image_manifests(fixture) for layer in m["layers"]
        if rules.tar_only(rules.Layer(layer["digest"], layer["mediaType"], layer.get("annotations", {}), layer["size"],
                                      image=m["config"]["mediaType"] in rules.IMAGE_CONFIGS))
    }  # fmt: skip
    assert layers, f"{kind} has no compressed layer"
    assert {digest: kept(drivers[mode], digest) for digest in layers} == dict.fromkeys(layers, (False, True))
    assert_stored_bytes_are_the_files(drivers[mode])


def test_a_titled_tar_gzip_that_may_be_a_file_keeps_its_blob(
    drivers, mode: str, oras_directory_push: ft.Fixture, oras_file_push: ft.Fixture, kubelet_root: Path
) -> None:
    """A titled ``tar+gzip`` outside an image is a directory (rule 3) or, if an entry lies outside
    its title, a file (rule 4) whose bytes are the blob itself: its blob stays next to its tar."""
    for fixture in (oras_directory_push, oras_file_push):
        check_kind(drivers, mode, fixture, kubelet_root)
        [layer] = [layer for layer in pushed_manifest(fixture)["layers"] if layer["mediaType"] == ft.OCI_TAR_GZIP]
        assert kept(drivers[mode], layer["digest"]) == (True, True), fixture.name
    assert_stored_bytes_are_the_files(drivers[mode])


@pytest.mark.parametrize("first", ["image", "file"])
def test_a_blob_one_artifact_keeps_as_its_tar_and_another_shows_as_a_file_serves_both(
    registry: str, drivers, mode: str, first: str, kubelet_root: Path
) -> None:
    """The same digest as an image's layer (its tar alone) and as another artifact's file (the blob
    itself): whichever is pulled first, the second finds what it needs, and both volumes are right."""
    files = {"etc/shared": (f"one blob, two uses, {mode}, {first}\n".encode(), 0o644)}
    image, as_file, blob = ft.push_one_blob_twice(registry, f"kinds/shared-{mode}-{first}", files)
    order = (image, as_file) if first == "image" else (as_file, image)
    for fixture in (*order, order[0]):
        check_kind(drivers, mode, fixture, kubelet_root)
    assert kept(drivers[mode], ft.sha256(blob)) == (True, True)
    assert_stored_bytes_are_the_files(drivers[mode])
