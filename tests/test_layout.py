"""layout.build_tree: the placement rules of docs/layout-rules.md and archive safety rules, on real tars
laid out in a temp dir the way the content store keeps them."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csi_driver import errors
from csi_driver.layout.manifest import Descriptor, ImageManifest
from csi_driver.layout.rules import OCI_TAR_GZIP, TITLE, UNPACK, Layer, Limits, TreeBuilder, build_tree, compression, layers_of, may_unpack, tar_only, tar_path
from csi_driver.layout.tree import blob_relpath, Entry, Kind, hardlinks

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"
KLAUS = "application/vnd.giantswarm.klaus-plugin.content.v1.tar+gzip"
Member = tuple[tarfile.TarInfo, bytes]


def file(name: str, data: bytes = b"", mode: int = 0o644, **meta: int) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for key, value in meta.items():
        setattr(info, key, value)
    return info, data


def directory(name: str, mode: int = 0o755, **meta: int) -> Member:
    info, _ = file(name, mode=mode, **meta)
    info.type = tarfile.DIRTYPE
    return info, b""


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    info, _ = file(name, mode=0o777)
    info.type, info.linkname = kind, target
    return info, b""


def hardlink(name: str, target: str) -> Member:
    return link(name, target, tarfile.LNKTYPE)


def special(name: str, kind: bytes) -> Member:
    info, _ = file(name)
    info.type = kind
    return info, b""


def tar_bytes(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def put_blob(state: Path, data: bytes, media_type: str, title: str | None = None, image: bool = False,
             **annotations: str) -> Layer:
    """Store ``data`` as a verified blob (and its decoded tar, for a compressed layer); ``image``:
    the layer belongs to a manifest whose config is an image config (rule 0)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layer = Layer(digest=digest, media_type=media_type, size=len(data), image=image,
                  annotations={**annotations, **({TITLE: title} if title is not None else {})})
    (state / blob_relpath(digest)).parent.mkdir(parents=True, exist_ok=True)
    (state / blob_relpath(digest)).write_bytes(data)
    return layer


def put_tar(state: Path, members: list[Member], media_type: str = KLAUS,
            title: str | None = None, fmt: int = tarfile.PAX_FORMAT, image: bool = False, **annotations: str) -> Layer:
    raw = tar_bytes(members, fmt)
    codec = compression(media_type)
    blob = {"": raw, "gzip": gzip.compress(raw), "zstd": zstandard.compress(raw)}.get(codec, raw)
    layer = put_blob(state, blob, media_type, title, image, **annotations)
    decoded = state / tar_path(layer)
    decoded.parent.mkdir(parents=True, exist_ok=True)
    decoded.write_bytes(raw)
    return layer


def tree(state: Path, *layers: Layer, limits: Limits = Limits()) -> dict[str, Entry]:
    entries = build_tree(state, layers, limits)
    return {entry.path: entry for entry in entries}


def content(state: Path, entry: Entry) -> bytes:
    with open(state / entry.source, "rb") as f:
        f.seek(entry.offset)
        return f.read(entry.size)


def refused(state: Path, *layers: Layer) -> str:
    with pytest.raises(errors.InvalidArgument) as caught:
        build_tree(state, layers, Limits())
    return caught.value.message


@pytest.mark.parametrize(("media_type", "codec"), [
    (OCI_TAR, ""),
    ("application/x-tar", ""),
    (OCI_TAR_GZIP, "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar", ""),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),
    (KLAUS, "gzip"),
    ("application/vnd.giantswarm.klaus-skill.content.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.config.v1+json", None),
    ("application/vnd.example.guitar", None),
    ("text/plain", None),
])
def test_compression_knows_the_tar_family(media_type: str, codec: str | None) -> None:
    assert compression(media_type) == codec


def test_tar_path_is_the_decoded_tar_or_the_blob_itself(tmp_path: Path) -> None:
    hex_ = "ab" * 32
    gz = Layer(f"sha256:{hex_}", OCI_TAR_GZIP, {}, 1)
    assert tar_path(gz) == f"layers/sha256/{hex_}.tar"
    assert tar_path(Layer(f"sha256:{hex_}", OCI_TAR, {}, 1)) == f"blobs/sha256/{hex_}"
    assert tar_path(Layer(f"sha256:{hex_}", "text/plain", {}, 1)) is None


@pytest.mark.parametrize(("media_type", "annotations", "unpacks"), [
    (KLAUS, {TITLE: "plugin.tar.gz"}, True),
    (OCI_TAR, {}, True),
    (OCI_TAR_GZIP, {TITLE: "dir"}, True),  # rule 3 must look inside
    ("application/vnd.example.tar+gzip", {TITLE: "dir", UNPACK: "true"}, True),
    (OCI_TAR, {TITLE: "notes.txt"}, False),  # ORAS file push: the blob is the file
    ("application/vnd.example.bundle.tar+gzip", {TITLE: "bundle.tgz"}, False),
    ("text/plain", {}, False),
])
def test_may_unpack_tells_the_store_which_layers_to_decode(
    media_type: str, annotations: dict[str, str], unpacks: bool
) -> None:
    assert may_unpack(Layer("sha256:" + "0" * 64, media_type, annotations, 1)) is unpacks


@pytest.mark.parametrize(("media_type", "annotations", "unpacks"), [
    (OCI_TAR, {TITLE: "notes.txt"}, True),  # in an image a title changes nothing
    ("application/vnd.example.bundle.tar+gzip", {TITLE: "bundle.tgz"}, True),
    ("text/plain", {TITLE: "notes.txt"}, False),  # refused, never decoded
])
def test_may_unpack_decodes_every_tar_layer_of_an_image(
    media_type: str, annotations: dict[str, str], unpacks: bool
) -> None:
    assert may_unpack(Layer("sha256:" + "0" * 64, media_type, annotations, 1, image=True)) is unpacks


@pytest.mark.parametrize(("media_type", "annotations", "image", "only"), [
    (OCI_TAR_GZIP, {}, False, True),  # rule 2
    ("application/vnd.oci.image.layer.v1.tar+zstd", {}, False, True),
    (KLAUS, {TITLE: "plugin.tar.gz"}, False, True),  # rule 2, titled or not
    ("application/vnd.example.tar+gzip", {TITLE: "dir", UNPACK: "true"}, False, True),  # rule 1
    (OCI_TAR_GZIP, {TITLE: "plugin.tar.gz"}, True, True),  # rule 0: the title is ignored
    (OCI_TAR_GZIP, {TITLE: "dir"}, False, False),  # rule 3 or 4: a file if an entry lies outside dir/
    ("application/vnd.example.bundle.tar+gzip", {TITLE: "bundle.tgz"}, False, False),  # rule 4
    (OCI_TAR, {}, False, False),  # a plain tar is its own blob
    ("text/plain", {TITLE: "notes.txt"}, False, False),
])
def test_tar_only_says_which_layers_the_store_keeps_as_their_tar_alone(
    media_type: str, annotations: dict[str, str], image: bool, only: bool
) -> None:
    assert tar_only(Layer("sha256:" + "0" * 64, media_type, annotations, 1, image=image)) is only


# -- rule 0: a manifest whose config is an image config is an image -----------------------------


def _manifest(config_type: str, *layers: Descriptor) -> ImageManifest:
    return ImageManifest(Descriptor(config_type, "sha256:" + "c" * 64, 2), list(layers))


@pytest.mark.parametrize(("config_type", "image"), [
    (OCI_IMAGE_CONFIG, True),
    (DOCKER_IMAGE_CONFIG, True),
    ("application/vnd.oci.empty.v1+json", False),  # oras push
    ("application/vnd.unknown.config.v1+json", False),  # oras push, older clients
    ("application/vnd.giantswarm.klaus-plugin.config.v1+json", False),
    ("", False),
])
def test_layers_of_a_manifest_know_whether_its_config_makes_it_an_image(config_type: str, image: bool) -> None:
    titled = Descriptor(OCI_TAR_GZIP, "sha256:" + "1" * 64, 10, {TITLE: "plugin.tar.gz"})
    plain = Descriptor(OCI_TAR, "sha256:" + "2" * 64, 20)
    assert layers_of(_manifest(config_type, titled, plain)) == [
        Layer(titled.digest, OCI_TAR_GZIP, {TITLE: "plugin.tar.gz"}, 10, image),
        Layer(plain.digest, OCI_TAR, {}, 20, image),
    ]


def _toolhive_plugin_members() -> list[Member]:
    """What toolhive-core writes: regular files only, sorted, at the root, no directory entries."""
    return [file(".claude-plugin/plugin.json", b'{"name": "scanner"}', mtime=0),
            file("commands/deploy.md", b"# Deploy\n", mtime=0),
            file("scripts/scan.sh", b"#!/bin/sh\n", mode=0o755, mtime=0)]


def test_rule_0_unpacks_an_images_titled_layer_at_the_root(tmp_path: Path) -> None:
    """ToolHive plugins and skills: an image config, one ``tar+gzip`` layer titled ``plugin.tar.gz``."""
    layer = put_tar(tmp_path, _toolhive_plugin_members(), OCI_TAR_GZIP, title="plugin.tar.gz", image=True)
    got = tree(tmp_path, layer)
    assert list(got) == ["", ".claude-plugin", ".claude-plugin/plugin.json", "commands", "commands/deploy.md",
                         "scripts", "scripts/scan.sh"]  # fmt: skip
    assert got[".claude-plugin"] == Entry(".claude-plugin", Kind.DIR, 0o755)  # never listed: 0755, 0:0, mtime 0
    assert (got["scripts/scan.sh"].mode, content(tmp_path, got["scripts/scan.sh"])) == (0o755, b"#!/bin/sh\n")


def test_without_an_image_config_the_same_titled_layer_stays_a_file(tmp_path: Path) -> None:
    """An ORAS artifact keeps rules 1 to 5: titled, entries not under the title, so rule 4."""
    layer = put_tar(tmp_path, _toolhive_plugin_members(), OCI_TAR_GZIP, title="plugin.tar.gz")
    got = tree(tmp_path, layer)
    assert list(got) == ["", "plugin.tar.gz"]
    assert got["plugin.tar.gz"].source == blob_relpath(layer.digest)


def test_rule_0_ignores_the_oras_unpack_annotation_and_applies_whiteouts(tmp_path: Path) -> None:
    """Titled and annotated unpack, entries not under the title: rule 1 would refuse it; in an
    image it is a file system layer like any other, its whiteouts acting on the layers below."""
    first = put_tar(tmp_path, [file("old", b"1"), file("keep", b"2")], OCI_TAR_GZIP, image=True)
    second = put_tar(tmp_path, [file(".wh.old"), file("new", b"3")], OCI_TAR_GZIP,
                     title="skill", image=True, **{UNPACK: "true"})
    assert list(tree(tmp_path, first, second)) == ["", "keep", "new"]


@pytest.mark.parametrize("title", [None, "notes.txt"])
def test_rule_0_refuses_a_non_tar_layer_of_an_image_naming_digest_and_media_type(
    tmp_path: Path, title: str | None
) -> None:
    layer = put_blob(tmp_path, b"remember the milk\n", "text/plain", title=title, image=True)
    message = refused(tmp_path, layer)
    assert layer.digest in message and "'text/plain'" in message and "image" in message


@pytest.mark.parametrize("prefix", ["", "./"])
@pytest.mark.parametrize("title", [None, "gs-base.tar.gz"])
def test_klaus_plugin_layer_mounts_at_root(tmp_path: Path, prefix: str, title: str | None) -> None:
    members = [directory(prefix + ".claude-plugin"),
               file(prefix + ".claude-plugin/plugin.json", b'{"name": "gs-base"}'),
               file(prefix + "skills/debug/SKILL.md", b"# debug\n")]
    if prefix:
        members.insert(0, directory("./", mode=0o750, uid=7))
    got = tree(tmp_path, put_tar(tmp_path, members, title=title))
    assert list(got) == ["", ".claude-plugin", ".claude-plugin/plugin.json", "skills",
                         "skills/debug", "skills/debug/SKILL.md"]
    assert content(tmp_path, got[".claude-plugin/plugin.json"]) == b'{"name": "gs-base"}'
    assert content(tmp_path, got["skills/debug/SKILL.md"]) == b"# debug\n"
    root = (got[""].mode, got[""].uid)
    assert root == ((0o750, 7) if prefix else (0o755, 0))


def test_files_modes_symlinks_and_dirs_are_exact(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [
        directory("bin", mode=0o750, uid=10, gid=20, mtime=1700000000),
        file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755, uid=1000, gid=1001, mtime=1234567890),
        file("etc/secret", b"s3cret", mode=0o400),
        directory("tmp", mode=0o1777),
        link("lib", "usr/lib"),
        link("bin/sh", "/bin/busybox"),
        file("empty"),
    ], media_type=OCI_TAR)
    got = tree(tmp_path, layer)
    assert got["bin"] == Entry("bin", Kind.DIR, 0o750, uid=10, gid=20, mtime=1700000000)
    tool = got["bin/tool"]
    assert (tool.kind, tool.mode, tool.uid, tool.gid, tool.mtime, tool.size) == (
        Kind.FILE, 0o755, 1000, 1001, 1234567890, 18)
    assert tool.source == blob_relpath(layer.digest)
    assert content(tmp_path, tool) == b"#!/bin/sh\necho hi\n"
    assert got["etc"] == Entry("etc", Kind.DIR, 0o755)  # implicit
    assert got["etc/secret"].mode == 0o400
    assert got["tmp"].mode == 0o1777
    assert (got["lib"].kind, got["lib"].link) == (Kind.SYMLINK, "usr/lib")
    assert got["bin/sh"].link == "/bin/busybox"  # absolute targets kept as stored
    assert (got["empty"].size, content(tmp_path, got["empty"])) == (0, b"")


def test_setuid_and_setgid_bits_are_dropped(tmp_path: Path) -> None:
    got = tree(tmp_path, put_tar(tmp_path, [
        file("su", b"x", mode=0o4755), file("sg", b"x", mode=0o2711),
        directory("d", mode=0o7777)]))
    assert (got["su"].mode, got["sg"].mode, got["d"].mode) == (0o755, 0o711, 0o1777)


def test_devices_and_fifos_are_skipped(tmp_path: Path) -> None:
    got = tree(tmp_path, put_tar(tmp_path, [
        directory("dev"), special("dev/null", tarfile.CHRTYPE), special("dev/sda", tarfile.BLKTYPE),
        special("fifo", tarfile.FIFOTYPE), file("kept", b"k")]))
    assert list(got) == ["", "dev", "kept"]


def test_hardlink_within_tree_shares_the_targets_bytes(tmp_path: Path) -> None:
    got = tree(tmp_path, put_tar(tmp_path, [
        file("usr/bin/python3.11", b"ELF", mode=0o755, uid=3), hardlink("usr/bin/python3", "usr/bin/python3.11"),
        hardlink("./py", "./usr/bin/python3.11")]))
    original = got["usr/bin/python3.11"]
    for path in ("usr/bin/python3", "py"):
        linked = got[path]
        assert linked.kind is Kind.FILE
        assert (linked.source, linked.offset, linked.size, linked.mode, linked.uid) == (
            original.source, original.offset, original.size, 0o755, 3)


def test_hardlinks_say_which_names_are_one_inode_and_how_many(tmp_path: Path) -> None:
    """What every view asks: the names of one member of a tar, counted; a file named once, and
    the two titles of one blob (a whole blob at offset 0, as ``oras pull`` writes two files),
    are not hardlinks."""
    layer = put_tar(tmp_path, [file("a", b"A"), hardlink("b", "a"), hardlink("d/c", "a"), file("solo", b"S")])
    got = tree(tmp_path, layer)
    titled = tree(tmp_path, put_blob(tmp_path, b"notes", "text/plain", "notes.txt"))["notes.txt"]
    entries = [*got.values(), titled, titled._replace(path="again.txt")]
    assert hardlinks(entries) == {got["a"].source: {got["a"].offset: 3}}
    assert hardlinks([got["a"], got["solo"], titled]) == {}


def test_gnu_and_pax_long_names_work(tmp_path: Path) -> None:
    deep = "/".join(["d" * 60] * 5) + "/file.txt"
    target = "t" * 150
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        got = tree(tmp_path, put_tar(tmp_path, [file(deep, b"long"), link("l", target)], fmt=fmt))
        assert content(tmp_path, got[deep]) == b"long"
        assert got["l"].link == target


def test_zstd_layer_is_read_from_its_decoded_tar(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("z", b"zstd!")],
                    media_type="application/vnd.oci.image.layer.v1.tar+zstd")
    got = tree(tmp_path, layer)
    assert got["z"].source == tar_path(layer)
    assert content(tmp_path, got["z"]) == b"zstd!"


def test_entries_come_sorted_directory_before_contents(tmp_path: Path) -> None:
    entries = build_tree(tmp_path, [put_tar(tmp_path, [
        file("b/z"), file("a-b"), file("a/b/c"), file("a/a"), directory("a")])], Limits())
    assert [entry.path for entry in entries] == ["", "a", "a/a", "a/b", "a/b/c", "a-b", "b", "b/z"]


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "a/../b"])
def test_hostile_entry_names_are_refused(tmp_path: Path, name: str) -> None:
    layer = put_tar(tmp_path, [file("ok"), file(name, b"evil")])
    message = refused(tmp_path, layer)
    assert layer.digest in message and repr(name) in message and "unsafe" in message


def test_writing_through_a_symlink_is_refused(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [link("link", "/etc"), file("link/passwd", b"root::0:0")])
    message = refused(tmp_path, layer)
    assert layer.digest in message and "link/passwd" in message and "unsafe" in message


def test_writing_through_a_symlink_of_an_earlier_layer_is_refused(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [link("etc", "/etc")], media_type=OCI_TAR)
    second = put_tar(tmp_path, [directory("etc/cron.d")], media_type=OCI_TAR)
    assert second.digest in refused(tmp_path, first, second)


@pytest.mark.parametrize("target", ["../etc/passwd", "/etc/passwd", "missing", "link/passwd", "dir"])
def test_hardlink_outside_the_tree_is_refused(tmp_path: Path, target: str) -> None:
    layer = put_tar(tmp_path, [link("link", "/etc"), directory("dir"), hardlink("h", target)])
    message = refused(tmp_path, layer)
    assert layer.digest in message and "'h'" in message and "unsafe" in message


def test_whiteout_removes_earlier_layers_entries(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("a/x", b"1"), file("a/y", b"2"), file("b/deep/z")])
    second = put_tar(tmp_path, [file("a/.wh.x"), file(".wh.b"), file("c")])
    assert list(tree(tmp_path, first, second)) == ["", "a", "a/y", "c"]


def test_whiteout_does_not_hide_its_own_layers_entry(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("x", b"old")])
    second = put_tar(tmp_path, [file("x", b"new"), file(".wh.x")])
    assert content(tmp_path, tree(tmp_path, first, second)["x"]) == b"new"


def test_opaque_whiteout_empties_a_directory_of_earlier_layers(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("d/old"), file("d/sub/deep"), file("keep")])
    second = put_tar(tmp_path, [directory("d", mode=0o700), file("d/sub/new"),
                                file("d/.wh..wh..opq"), file("d/later")])
    got = tree(tmp_path, first, second)
    assert list(got) == ["", "d", "d/later", "d/sub", "d/sub/new", "keep"]
    assert got["d"].mode == 0o700


@pytest.mark.parametrize("name", ["a/.wh...", "a/.wh..", ".wh."])
def test_whiteout_escaping_its_directory_is_refused(tmp_path: Path, name: str) -> None:
    first = put_tar(tmp_path, [file("a/x"), file("y")])
    second = put_tar(tmp_path, [file(name)])
    assert second.digest in refused(tmp_path, first, second)


def test_file_over_dir_drops_the_dirs_subtree(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("d/x"), file("d/e/y")])
    second = put_tar(tmp_path, [file("d", b"now a file")])
    got = tree(tmp_path, first, second)
    assert list(got) == ["", "d"] and got["d"].kind is Kind.FILE


def test_dir_over_file_replaces_it(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("d", b"file")])
    second = put_tar(tmp_path, [directory("d", mode=0o711), file("d/x")])
    got = tree(tmp_path, first, second)
    assert (got["d"].kind, got["d"].mode) == (Kind.DIR, 0o711) and "d/x" in got


def test_symlink_over_dir_drops_the_dirs_subtree(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [file("lib/x")])
    second = put_tar(tmp_path, [link("lib", "usr/lib")])
    got = tree(tmp_path, first, second)
    assert list(got) == ["", "lib"] and got["lib"].kind is Kind.SYMLINK


def test_dir_over_dir_updates_metadata_and_keeps_children(tmp_path: Path) -> None:
    first = put_tar(tmp_path, [directory("d", mode=0o755), file("d/x")])
    second = put_tar(tmp_path, [directory("d", mode=0o700, uid=5, mtime=99)])
    got = tree(tmp_path, first, second)
    assert got["d"] == Entry("d", Kind.DIR, 0o700, uid=5, mtime=99) and "d/x" in got


def test_entry_below_a_file_is_refused(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("f"), file("f/x")])
    assert "'f/x'" in refused(tmp_path, layer)


@pytest.mark.parametrize("media_type", [OCI_TAR, "application/vnd.example.bundle.tar+gzip",
                                        "application/octet-stream"])
def test_oras_file_push_places_the_blob_as_a_file(tmp_path: Path, media_type: str) -> None:
    data = gzip.compress(tar_bytes([file("inner")]))  # even a tarball is just a file here
    layer = put_blob(tmp_path, data, media_type, title="docs/bundle.tar.gz")
    got = tree(tmp_path, layer)
    assert got["docs"] == Entry("docs", Kind.DIR, 0o755)
    assert got["docs/bundle.tar.gz"] == Entry(
        "docs/bundle.tar.gz", Kind.FILE, 0o644, size=len(data), source=blob_relpath(layer.digest))
    assert content(tmp_path, got["docs/bundle.tar.gz"]) == data


def test_oras_directory_push_unpacks_under_its_title(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [directory("skill"), file("skill/SKILL.md", b"# s"),
                               file("skill/.wh.kept", b"literal")],
                    media_type=OCI_TAR_GZIP, title="skill", **{UNPACK: "true"})
    got = tree(tmp_path, layer)
    assert list(got) == ["", "skill", "skill/.wh.kept", "skill/SKILL.md"]
    assert content(tmp_path, got["skill/SKILL.md"]) == b"# s"


def test_oras_directory_push_with_an_entry_elsewhere_is_refused(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("skill/SKILL.md"), file("elsewhere")],
                    media_type=OCI_TAR_GZIP, title="skill", **{UNPACK: "true"})
    message = refused(tmp_path, layer)
    assert layer.digest in message and "'elsewhere'" in message


def test_oras_directory_push_of_a_non_tar_is_refused(tmp_path: Path) -> None:
    layer = put_blob(tmp_path, b"{}", "application/json", title="skill", **{UNPACK: "true"})
    message = refused(tmp_path, layer)
    assert layer.digest in message and "application/json" in message


def test_oras_python_directory_push_unpacks_under_its_title(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [directory("my-skill"), file("my-skill/a/b.txt", b"b")],
                    media_type=OCI_TAR_GZIP, title="my-skill")
    assert list(tree(tmp_path, layer)) == ["", "my-skill", "my-skill/a", "my-skill/a/b.txt"]


def test_titled_tar_gzip_with_entries_elsewhere_falls_through_to_a_file(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("README"), file("../escape")],
                    media_type=OCI_TAR_GZIP, title="release.tar.gz")
    got = tree(tmp_path, layer)
    assert list(got) == ["", "release.tar.gz"]
    assert got["release.tar.gz"].source == blob_relpath(layer.digest)
    assert got["release.tar.gz"].size == layer.size


@pytest.mark.parametrize("title", ["../x", "/etc/passwd", ".", "a\0b"])
def test_unsafe_title_is_refused(tmp_path: Path, title: str) -> None:
    layer = put_blob(tmp_path, b"x", "text/plain", title=title)
    assert layer.digest in refused(tmp_path, layer)


def test_unknown_media_type_is_refused_naming_digest_and_media_type(tmp_path: Path) -> None:
    layer = put_blob(tmp_path, b"{}", "application/vnd.example.thing.v1+json")
    message = refused(tmp_path, layer)
    assert layer.digest in message and "application/vnd.example.thing.v1+json" in message


def test_a_tar_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    layer = put_blob(tmp_path, b"not a tar at all" * 100, OCI_TAR)
    assert layer.digest in refused(tmp_path, layer)


def test_a_file_running_past_the_end_of_the_tar_is_refused(tmp_path: Path) -> None:
    raw = tar_bytes([file("big", b"x" * 5000)])
    layer = put_blob(tmp_path, raw[:2048], OCI_TAR)
    assert layer.digest in refused(tmp_path, layer)


def test_more_entries_than_the_limit_are_refused(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file(f"f{i}") for i in range(10)])
    assert len(build_tree(tmp_path, [layer], Limits(max_entries=10))) == 11
    with pytest.raises(errors.ResourceExhausted, match="--max-entries"):
        build_tree(tmp_path, [layer], Limits(max_entries=9))


def test_implicit_directories_count_as_entries(tmp_path: Path) -> None:
    layer = put_tar(tmp_path, [file("a/b/c/d/e")])
    with pytest.raises(errors.ResourceExhausted, match="--max-entries"):
        build_tree(tmp_path, [layer], Limits(max_entries=4))


def test_more_unpacked_bytes_than_the_limit_are_refused(tmp_path: Path) -> None:
    tar_layer = put_tar(tmp_path, [file("a", b"x" * 600), hardlink("b", "a")])
    oras_file = put_blob(tmp_path, b"y" * 100, "text/plain", title="notes.txt")
    assert tree(tmp_path, tar_layer, oras_file, limits=Limits(max_unpacked_bytes=1300))
    with pytest.raises(errors.ResourceExhausted, match="--max-unpacked-bytes"):
        build_tree(tmp_path, [tar_layer], Limits(max_unpacked_bytes=1199))  # hardlinks count
    with pytest.raises(errors.ResourceExhausted, match="--max-unpacked-bytes"):
        build_tree(tmp_path, [tar_layer, oras_file], Limits(max_unpacked_bytes=1299))


# A property check over random two-layer archives from a small alphabet of names:
# whatever the mix, the result is a well-formed tree, or a refusal.
_names = st.builds(
    lambda dirs, base: "/".join([*dirs, base]),
    st.lists(st.sampled_from(["a", "b"]), max_size=2),
    st.sampled_from(["a", "b", ".wh.a", ".wh.b", ".wh..wh..opq"]),
)
_members = st.lists(st.tuples(st.sampled_from(["file", "dir", "link"]), _names), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layers=st.lists(_members, min_size=1, max_size=2))
def test_any_mix_of_entries_gives_a_well_formed_tree(tmp_path: Path,
                                                     layers: list[list[tuple[str, str]]]) -> None:
    make = {"file": file, "dir": directory, "link": lambda name: link(name, "a")}
    stored = [put_tar(tmp_path, [make[kind](name) for kind, name in members]) for members in layers]
    try:
        entries = build_tree(tmp_path, stored, Limits())
    except errors.InvalidArgument:
        return
    kinds = {entry.path: entry.kind for entry in entries}
    assert entries[0].path == ""
    for index, entry in enumerate(entries[1:], start=1):
        parent = entry.path.rpartition("/")[0]
        assert kinds.get(parent) is Kind.DIR
        assert [e.path for e in entries[:index]].count(parent) == 1
        assert ".wh." not in entry.path


def _cut_after_last_data(raw: bytes, extra: int = 0) -> bytes:
    """``raw`` ending right after its last member's data (plus ``extra`` bytes of padding)."""
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    return raw[: last.offset_data + last.size + extra]


@pytest.mark.parametrize("extra", [0, 100])
def test_a_tar_ending_right_after_its_last_files_data_is_read(tmp_path: Path, extra: int) -> None:
    """umoci 0.4 ``insert`` writes such layers (no padding after the last file, no end-of-archive
    blocks); Go's archive/tar, and so containerd, Docker and umoci, read them as complete."""
    raw = _cut_after_last_data(tar_bytes([directory("d"), file("d/f", b"abc"), file("d/g", b"last")]), extra)
    layer = put_blob(tmp_path, raw, OCI_TAR)
    got = tree(tmp_path, layer)
    assert sorted(got) == ["", "d", "d/f", "d/g"]
    assert content(tmp_path, got["d/g"]) == b"last"


def test_a_tar_cut_inside_its_last_files_data_is_still_refused(tmp_path: Path) -> None:
    raw = _cut_after_last_data(tar_bytes([file("f", b"abc"), file("g", b"x" * 600)]))
    layer = put_blob(tmp_path, raw[:-1], OCI_TAR)
    assert layer.digest in refused(tmp_path, layer)


def test_layers_handed_over_in_any_order_give_the_tree_of_manifest_order(tmp_path: Path) -> None:
    """The pull hands layers to a TreeBuilder as they finish downloading, in any order."""
    layers = [
        put_tar(tmp_path, [file("a", b"first"), file("keep", b"k")], OCI_TAR),
        put_tar(tmp_path, [file("a", b"second"), file(".wh.keep")], OCI_TAR),
        put_tar(tmp_path, [file("b", b"third")], OCI_TAR),
    ]
    builder = TreeBuilder(tmp_path, layers, Limits())
    for index in (2, 1, 0):
        builder.fetched(index)
    assert builder.entries() == build_tree(tmp_path, layers, Limits())
    assert {e.path for e in builder.entries()} == {"", "a", "b"}


def test_a_later_layers_error_waits_for_its_turn_so_the_first_broken_layer_is_named(tmp_path: Path) -> None:
    broken = [put_blob(tmp_path, b"not a tar at all" * 64, OCI_TAR), put_blob(tmp_path, b"nor this" * 99, OCI_TAR)]
    builder = TreeBuilder(tmp_path, broken, Limits())
    builder.fetched(1)  # read, refused, but not raised: layer 0 comes first
    with pytest.raises(errors.InvalidArgument, match=broken[0].digest):
        builder.fetched(0)


# -- modification times ---------------------------------------------------------------------------


def timed_members() -> list[Member]:
    """Members whose PAX ``mtime`` records carry nanoseconds, as Go's archive/tar and GNU tar write
    them, before 1970 too, and plain ustar headers of whole seconds: what ``TIMES`` expects of them."""
    return [
        file("go", b"g", pax_headers={"mtime": "1700000000.123456789"}),
        file("before-1970", b"b", pax_headers={"mtime": "-1.5"}),
        directory("dir", pax_headers={"mtime": "1600000000.000000001"}),
        file("dir/short-fraction", b"s", pax_headers={"mtime": "1700000000.5"}),
        file("dir/ten-digits", b"t", pax_headers={"mtime": "1700000000.9999999999"}),
        file("negative-ten-digits", b"n", pax_headers={"mtime": "-1.0000000019"}),
        file("whole", b"w", mtime=1500000000),
        directory("whole-dir", mtime=1400000000),
    ]


TIMES = {
    "go": (1700000000, 123456789),
    "before-1970": (-2, 500000000),  # -1.5 s: whole seconds toward minus infinity, as the kernel's timespec
    "dir": (1600000000, 1),
    "dir/short-fraction": (1700000000, 500000000),
    "dir/ten-digits": (1700000000, 999999999),  # digits past the ninth are cut off, as Go does
    "negative-ten-digits": (-2, 999999999),  # -1.000000001 s: cut off toward zero, as Go does
    "whole": (1500000000, 0),
    "whole-dir": (1400000000, 0),
}
"""(mtime, mtime_nsec) of each of ``timed_members``."""


@pytest.mark.parametrize("parser", ["fast", "tarfile"])
def test_pax_mtimes_keep_their_nanoseconds_as_gos_archive_tar_reads_them(tmp_path: Path, parser: str) -> None:
    import fuzzing

    with fuzzing.plain_tarfile_only() if parser == "tarfile" else contextlib.nullcontext():
        entries = tree(tmp_path, put_tar(tmp_path, timed_members(), OCI_TAR, image=True))
    assert {path: (e.mtime, e.mtime_nsec) for path, e in entries.items() if path} == TIMES


def test_a_global_pax_mtime_keeps_its_nanoseconds(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"mtime": "1700000000.25"}) as tar:
        info, data = file("f", b"x")
        tar.addfile(info, io.BytesIO(data))
    layer = put_blob(tmp_path, buf.getvalue(), OCI_TAR, image=True)
    entry = tree(tmp_path, layer)["f"]
    assert (entry.mtime, entry.mtime_nsec) == (1700000000, 250000000)


@pytest.mark.parametrize("value", ["1e3", " 7", "1_0", "nan", ".5", "5.x", "9223372037"])
def test_a_pax_mtime_gos_archive_tar_refuses_is_refused(tmp_path: Path, value: str) -> None:
    layer = put_tar(tmp_path, [file("f", b"x", pax_headers={"mtime": value})], OCI_TAR)
    assert "mtime" in refused(tmp_path, layer)
