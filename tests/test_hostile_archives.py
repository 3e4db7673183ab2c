"""The hostile-archive corpus (issue 7): each case is an artifact built to attack the node, pushed
as it is to the real registry, and published through the real ``serve`` in both data planes.

Refused cases must answer the code of docs/errors.md with a message naming the layer digest
and the entry (or the limit's flag); neutralised cases (setuid bits, devices, symlinks kept as
stored, whiteouts through symlinks) must publish exactly what the rules say. Either way
``hostile.Watch`` proves nothing was created outside the state dir and the target, no mount is
left, and the driver then still publishes a good plugin. One driver per data plane serves the
whole module, started with small limits (``--max-entries 2000 --max-unpacked-bytes 16MiB``) so
that the bombs stay small; ``--max-layers`` and ``--max-manifest-bytes`` keep their defaults.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from artifacts import PLUGIN_TREE, push_klaus
from driver import Driver, run_driver, walk
from hostile import (
    KLAUS,
    MARKER,
    OCI_CONFIG,
    TAR,
    TGZ,
    TITLE,
    TZST,
    UNPACK,
    VICTIM,
    Blob,
    Canary,
    Case,
    Watch,
    assert_still_serves,
    d,
    expect,
    f,
    gz,
    hard,
    layer,
    pax,
    push_manifest,
    special,
    sym,
    tar,
    titled,
    zst,
)
from kubelet import publish_request, target_for, unpublish_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_ENTRIES = 2000
MAX_UNPACKED = 16 << 20
LIMITS = ["--max-entries", str(MAX_ENTRIES), "--max-unpacked-bytes", "16MiB"]


def up(canary: str, leaf: str) -> str:
    """``../`` enough times to reach ``/`` from anywhere, then the canary: a relative escape."""
    return "../" * 16 + canary.lstrip("/") + "/" + leaf


def ustar_name_bytes(raw: bytes) -> Blob:
    """A plain ustar layer whose one file is named by the raw bytes ``raw`` (not UTF-8)."""
    archive = bytearray(tar(f("placeholder", b"x"), fmt=tarfile.USTAR_FORMAT))
    archive[0:100] = raw.ljust(100, b"\0")
    archive[148:156] = b" " * 8
    archive[148:156] = b"%06o\0 " % (sum(archive[0:512]))
    return Blob(gz(bytes(archive)), TGZ)


def sparse_with_negative_size() -> Blob:
    """A GNU sparse header whose size field is a huge negative base-256 number, then a file:
    tarfile takes the next header to be ~2**88 bytes *before* this one (found by the long
    fuzzing run, seeds 153174 and 497813: it crashed the layout with an OverflowError)."""
    archive = bytearray(tar(special("sparse", tarfile.GNUTYPE_SPARSE), f("after", b"y"), fmt=tarfile.GNU_FORMAT))
    archive[124:136] = b"\xff" + b"\0" * 11
    archive[148:156] = b" " * 8
    archive[148:156] = b"%06o\0 " % (sum(archive[0:512]))
    return Blob(gz(bytes(archive)), TGZ)


def chained_pax_headers(count: int) -> Blob:
    """``count`` PAX extended headers in a row before one file (tarfile reads them recursively)."""
    one = tar(pax("x", b"", comment="c"))  # a pax header block + its data, then the file header
    header = one[:1024]  # the 'x' header and its one data block
    body = tar(f("after", b"y"))
    return Blob(gz(header * count + body), TGZ)


def big_pax_header(size: int) -> Blob:
    return layer(pax("big-pax", b"", comment="c" * size))


def bomb(codec: str) -> Blob:
    zeros = tar(f("zeros", b"\0" * (MAX_UNPACKED * 2)))
    return Blob(gz(zeros) if codec == "gzip" else zst(zeros), TGZ if codec == "gzip" else TZST)


def truncated(blob: Blob, keep: int) -> Blob:
    return Blob(blob.data[:keep], blob.media_type)


def zstd_cut_between_frames() -> Blob:
    """Two zstd frames, the second cut short: what is left inflates to a complete-looking tar
    of the first file only (a tar may end right after a file's data, as umoci writes them)."""
    whole = tar(f("first", b"1" * 512), f("second", b"2" * 512))
    return Blob(zst(whole[:1024]) + zst(whole[1024:])[:12], TZST)


# -- checks of published (neutralised) cases --------------------------------------------------------


def check_modes(target: Path, canary: str) -> None:
    seen = walk(target)
    assert seen["suid"][1] == 0o755 and seen["sgid-dir"][1] == 0o775 and seen["sticky-dir"][1] == 0o1777
    assert seen["both"][1] == 0o700
    for path in ("suid", "both"):
        assert not os.stat(target / path).st_mode & (stat.S_ISUID | stat.S_ISGID)


def check_only(*names: str):  # type: ignore[no-untyped-def]
    def check(target: Path, canary: str) -> None:
        assert sorted(walk(target)) == sorted(names)

    return check


def check_symlinks_verbatim(target: Path, canary: str) -> None:
    assert os.readlink(target / "abs") == f"{canary}/victim"
    assert os.readlink(target / "rel") == up(canary, "victim")
    assert os.readlink(target / "chain") == "abs"
    assert sorted(walk(target)) == ["abs", "chain", "rel"]


def check_owners(target: Path, canary: str) -> None:
    seen = walk(target)
    assert seen["nobody"][2:4] == (65534, 65534)
    assert seen["big-ids"][2:4] == (4294967294, 2**31)


def check_variants(target: Path, canary: str) -> None:
    seen = walk(target)
    assert sorted(seen) == ["a", "a/b", "a/c", "d"]
    assert seen["a/b"][4] == b"1" and seen["a/c"][4] == b"2" and seen["d"][4] == b"3"


def check_newline(target: Path, canary: str) -> None:
    assert walk(target) == {"line\nbreak": ("file", 0o644, 0, 0, b"n")}


LONG = "/".join(["L" * 200] * 14)  # 2,813 bytes: PAX, well past ustar's 255


def check_long(target: Path, canary: str) -> None:
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in LONG.split("/")[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        leaf = os.open(LONG.rsplit("/", 1)[1], os.O_RDONLY, dir_fd=fd)
        assert os.read(leaf, 10) == b"long"
        os.close(leaf)
    finally:
        os.close(fd)


def check_oras_file(target: Path, canary: str) -> None:
    assert sorted(walk(target)) == ["bundle.tgz"]
    assert (target / "bundle.tgz").read_bytes()[:2] == b"\x1f\x8b"


CASES = [
    # -- archive paths -------------------------------------------------------------------------------
    Case("dotdot_relative_escape", lambda c: [layer(f(up(c, f"{MARKER}-dotdot"), b"x"))],
         INVALID, ("{l0}", f"{MARKER}-dotdot", "'..'")),
    Case("dotdot_in_the_middle", lambda c: [layer(f("a/b/../../" + up(c, f"{MARKER}-mid"), b"x"))],
         INVALID, ("{l0}", f"{MARKER}-mid")),
    Case("dotdot_as_the_last_component", lambda c: [layer(d("a"), f("a/..", b"x"))], INVALID, ("{l0}", "'a/..'")),
    Case("absolute_path", lambda c: [layer(f(f"{c}/{MARKER}-abs", b"x"))], INVALID, ("{l0}", f"{MARKER}-abs", "absolute")),
    Case("absolute_path_with_double_slash", lambda c: [layer(f(f"/{c}/{MARKER}-dslash", b"x"))],
         INVALID, ("{l0}", f"{MARKER}-dslash")),
    Case("dot_slash_then_dotdot", lambda c: [layer(f("./" + up(c, f"{MARKER}-dotslash"), b"x"))],
         INVALID, ("{l0}", f"{MARKER}-dotslash")),
    Case("double_slashes_around_dotdot", lambda c: [layer(f("a//..//..//" + up(c, f"{MARKER}-dslashdd"), b"x"))],
         INVALID, ("{l0}", f"{MARKER}-dslashdd")),
    Case("pax_path_overrides_a_harmless_name_with_dotdot",
         lambda c: [layer(pax("harmless", b"x", path=up(c, f"{MARKER}-pax")))], INVALID, ("{l0}", f"{MARKER}-pax")),
    Case("gnu_long_name_with_dotdot",
         lambda c: [layer(f("x" * 120 + "/../../" + up(c, f"{MARKER}-gnu"), b"x"), fmt=tarfile.GNU_FORMAT)],
         INVALID, ("{l0}", f"{MARKER}-gnu")),
    Case("pax_name_with_a_nul_byte", lambda c: [layer(pax("nul", b"x", path=f"ok\0/{up(c, MARKER + '-nul')}"))],
         INVALID, ("{l0}", "NUL")),
    Case("pax_name_component_longer_than_255_bytes", lambda c: [layer(pax("long", b"x", path="n" * 256))],
         INVALID, ("{l0}", "255")),
    Case("name_that_is_not_utf8", lambda c: [ustar_name_bytes(b"bad-\xff-name")], INVALID, ("{l0}", "UTF-8")),
    Case("dot_and_double_slash_variants_mean_the_same_path",
         lambda c: [layer(f("./a//b", b"1"), f("a/./c", b"2"), f(".//d", b"3"))], None, check=check_variants),
    Case("newline_in_a_pax_name_is_kept_as_a_name", lambda c: [layer(pax("nl", b"n", path="line\nbreak"))],
         None, check=check_newline),
    Case("very_long_pax_path_is_served", lambda c: [layer(pax("long", b"long", path=LONG))], None, check=check_long),
    # -- links -----------------------------------------------------------------------------------------
    Case("write_through_an_absolute_symlink", lambda c: [layer(sym("esc", c), f(f"esc/{MARKER}-abslink", b"x"))],
         INVALID, ("{l0}", f"{MARKER}-abslink", "symlink 'esc'")),
    Case("write_through_a_relative_dotdot_symlink",
         lambda c: [layer(sym("esc", up(c, "")), f(f"esc/{MARKER}-rellink", b"x"))],
         INVALID, ("{l0}", "symlink 'esc'")),
    Case("write_through_a_chain_of_symlinks",
         lambda c: [layer(sym("a", "b"), sym("b", "c"), sym("c", c), f(f"a/{MARKER}-chain", b"x"))],
         INVALID, ("{l0}", "symlink 'a'")),
    Case("write_through_a_symlink_to_itself_dot", lambda c: [layer(sym("self", "."), f(f"self/self/{MARKER}", b"x"))],
         INVALID, ("{l0}", "symlink 'self'")),
    Case("directory_replaced_by_a_symlink_then_written_into",
         lambda c: [layer(d("dir"), f("dir/ok", b"x"), sym("dir", c), f(f"dir/{MARKER}-replaced", b"x"))],
         INVALID, ("{l0}", "symlink 'dir'")),
    Case("symlink_of_a_lower_layer_written_through_by_an_upper_layer",
         lambda c: [layer(sym("esc", c)), layer(f(f"esc/{MARKER}-layer", b"x"))],
         INVALID, ("{l1}", "symlink 'esc'")),
    Case("directory_of_layer_one_symlinked_in_layer_two_written_in_layer_three",
         lambda c: [layer(d("etc"), f("etc/ok", b"x")), layer(sym("etc", c)), layer(f(f"etc/{MARKER}", b"x"))],
         INVALID, ("{l2}", "symlink 'etc'")),
    Case("hardlink_to_an_absolute_path", lambda c: [layer(hard("h", f"{c}/victim"))], INVALID, ("{l0}", "hardlink", "victim")),
    Case("hardlink_with_dotdot", lambda c: [layer(hard("h", up(c, "victim")))], INVALID, ("{l0}", "hardlink")),
    Case("hardlink_through_a_symlink", lambda c: [layer(sym("s", c), hard("h", "s/victim"))], INVALID, ("{l0}", "'s/victim'")),
    Case("hardlink_to_an_entry_not_yet_extracted", lambda c: [layer(hard("h", "later"), f("later", b"x"))],
         INVALID, ("{l0}", "'later'")),
    Case("hardlink_to_a_directory", lambda c: [layer(d("dd"), hard("h", "dd"))], INVALID, ("{l0}", "'dd'")),
    Case("hardlink_to_a_symlink_pointing_out", lambda c: [layer(sym("s", f"{c}/victim"), hard("h", "s"))],
         INVALID, ("{l0}", "hardlink")),
    Case("symlinks_pointing_out_are_kept_verbatim_and_never_followed",
         lambda c: [layer(sym("abs", f"{c}/victim"), sym("rel", up(c, "victim")), sym("chain", "abs"))],
         None, check=check_symlinks_verbatim),
    # -- privilege -------------------------------------------------------------------------------------
    Case("setuid_and_setgid_bits_are_dropped",
         lambda c: [layer(f("suid", b"#!/bin/sh\n", mode=0o4755), f("both", b"x", mode=0o6700),
                          d("sgid-dir", mode=0o2775), d("sticky-dir", mode=0o1777))],
         None, check=check_modes),
    Case("device_nodes_are_skipped",
         lambda c: [layer(d("dev"), special("dev/sda", tarfile.CHRTYPE, 8, 0), special("dev/mem", tarfile.CHRTYPE, 1, 1),
                          special("dev/loop0", tarfile.BLKTYPE, 7, 0), f("dev/ok", b"x"))],
         None, check=check_only("dev", "dev/ok")),
    Case("fifos_are_skipped", lambda c: [layer(special("fifo", tarfile.FIFOTYPE), f("ok", b"x"))], None, check=check_only("ok")),
    Case("socket_and_unknown_type_flags_are_skipped",
         lambda c: [layer(special("sock", b"s"), special("weird", b"Z"), f("ok", b"x"))], None, check=check_only("ok")),
    Case("odd_but_valid_owners_are_kept",
         lambda c: [layer(f("nobody", b"x", uid=65534, gid=65534), f("big-ids", b"x", uid=4294967294, gid=2**31))],
         None, check=check_owners),
    Case("uid_beyond_uid_t", lambda c: [layer(pax("huge-uid", b"x", uid=str(2**32 + 5)))], INVALID, ("{l0}", "huge-uid", "uid")),
    Case("negative_gid", lambda c: [layer(f("neg-gid", b"x", gid=-2), fmt=tarfile.GNU_FORMAT)], INVALID, ("{l0}", "neg-gid", "gid")),
    Case("mtime_not_a_number", lambda c: [layer(pax("nan-time", b"x", mtime="nan"))], INVALID, ("{l0}", "nan-time", "mtime")),
    Case("mtime_beyond_any_clock", lambda c: [layer(pax("far-time", b"x", mtime="1e300"))], INVALID, ("{l0}", "far-time", "mtime")),
    # -- whiteouts ---------------------------------------------------------------------------------------
    Case("whiteout_naming_dotdot", lambda c: [layer(f("keep", b"x")), layer(d("a"), f("a/.wh...", b""))],
         INVALID, ("{l1}", "whiteout")),
    Case("whiteout_naming_dot", lambda c: [layer(f("keep", b"x")), layer(f(".wh..", b""))], INVALID, ("{l1}", "whiteout")),
    Case("whiteout_of_nothing_at_the_root", lambda c: [layer(f("keep", b"x")), layer(f(".wh.", b""))], INVALID, ("{l1}", "whiteout")),
    Case("whiteout_with_a_dotdot_path", lambda c: [layer(f("keep", b"x")), layer(f(up(c, ".wh.victim"), b""))],
         INVALID, ("{l1}", ".wh.victim")),
    Case("whiteout_with_an_absolute_path", lambda c: [layer(f("keep", b"x")), layer(f(f"{c}/.wh.victim", b""))],
         INVALID, ("{l1}", ".wh.victim")),
    Case("whiteout_through_a_symlink_removes_nothing_outside",
         lambda c: [layer(sym("s", c), f("keep", b"x")), layer(f("s/.wh.victim", b""))], None, check=check_only("keep", "s")),
    Case("opaque_marker_through_a_symlink_empties_nothing_outside",
         lambda c: [layer(sym("s", c), f("keep", b"x")), layer(f("s/.wh..wh..opq", b""))], None, check=check_only("keep", "s")),
    Case("opaque_marker_at_the_root_hides_only_lower_layers",
         lambda c: [layer(f("old", b"x"), d("olddir"), f("olddir/f", b"y")), layer(f(".wh..wh..opq", b""), f("new", b"z"))],
         None, check=check_only("new")),
    # -- ORAS titles ---------------------------------------------------------------------------------------
    Case("oras_title_absolute", lambda c: [titled(b"pwn", f"{c}/{MARKER}-title")], INVALID, ("{l0}", f"{MARKER}-title")),
    Case("oras_title_with_dotdot", lambda c: [titled(b"pwn", up(c, f"{MARKER}-title"))], INVALID, ("{l0}", f"{MARKER}-title")),
    Case("oras_title_with_dotdot_in_the_middle", lambda c: [titled(b"pwn", f"docs/../../{MARKER}")], INVALID, ("{l0}", "docs/../..")),
    Case("oras_title_dot", lambda c: [titled(b"pwn", ".")], INVALID, ("{l0}", "title '.'")),
    Case("oras_title_with_a_nul_byte", lambda c: [titled(b"pwn", "notes\0.txt")], INVALID, ("{l0}",)),
    Case("oras_titles_that_collide", lambda c: [titled(b"one", "notes.txt"), titled(b"two", "./notes.txt")],
         INVALID, ("{l1}", "notes.txt", "{l0}")),
    Case("oras_title_below_another_file_title", lambda c: [titled(b"one", "notes"), titled(b"two", "notes/inner")],
         INVALID, ("{l1}", "notes")),
    Case("oras_directory_push_with_an_escaping_entry",
         lambda c: [layer(d("skill"), f("skill/SKILL.md", b"x"), f("skill/../" + up(c, MARKER), b"x"),
                          annotations={TITLE: "skill", UNPACK: "true"})],
         INVALID, ("{l0}", "skill")),
    Case("oras_directory_push_with_an_absolute_entry",
         lambda c: [layer(d("skill"), f(f"{c}/{MARKER}-oras", b"x"), annotations={TITLE: "skill", UNPACK: "true"})],
         INVALID, ("{l0}", f"{MARKER}-oras")),
    Case("titled_tar_gzip_with_escaping_entries_is_shown_as_a_file_not_unpacked",
         lambda c: [titled(gz(tar(f(up(c, MARKER), b"x"))), "bundle.tgz", TGZ)], None, check=check_oras_file),
    Case("titled_tar_gzip_of_an_image_with_escaping_entries_is_unpacked_so_refused",
         lambda c: [titled(gz(tar(f(up(c, f"{MARKER}-image"), b"x"))), "plugin.tar.gz", TGZ)],
         INVALID, ("{l0}", f"{MARKER}-image", "'..'"), config_type=OCI_CONFIG),
    Case("titled_non_tar_layer_of_an_image_is_refused_not_shown_as_a_file",
         lambda c: [titled(b"pwn", f"{MARKER}-notes.txt")], INVALID, ("{l0}", "'text/plain'"), config_type=OCI_CONFIG),
    # -- resource bombs --------------------------------------------------------------------------------------
    Case("gzip_bomb_past_max_unpacked_bytes", lambda c: [bomb("gzip")], EXHAUSTED, ("{l0}", "--max-unpacked-bytes")),
    Case("zstd_bomb_past_max_unpacked_bytes", lambda c: [bomb("zstd")], EXHAUSTED, ("{l0}", "--max-unpacked-bytes")),
    Case("unpacked_bytes_add_up_across_layers",
         lambda c: [layer(f("one", bytes(9 << 20))), layer(f("two", bytes(9 << 20)))],
         EXHAUSTED, ("{l1}", "--max-unpacked-bytes")),
    Case("declared_layer_sizes_past_max_unpacked_bytes_refused_before_download",
         lambda c: [layer(f("one", os.urandom(9 << 20))), layer(f("two", os.urandom(9 << 20)))],
         EXHAUSTED, ("declares layers", "--max-unpacked-bytes")),
    Case("hardlinks_amplifying_one_file_past_max_unpacked_bytes",
         lambda c: [layer(f("big", os.urandom(1 << 20)), *(hard(f"h{i}", "big") for i in range(20)))],
         EXHAUSTED, ("{l0}", "--max-unpacked-bytes")),
    Case("negative_pax_size_to_cancel_out_counted_bytes",
         lambda c: [layer(pax("minus", b"", size=str(-(1 << 40))), f("big", os.urandom(1 << 20)),
                          *(hard(f"h{i}", "big") for i in range(20)))],
         INVALID, ("{l0}", "minus", "size")),
    Case("pax_size_far_past_the_end_of_the_archive", lambda c: [layer(pax("huge", b"", size=str(2**62)), f("after", b"x"))],
         INVALID, ("{l0}",)),
    Case("more_entries_than_max_entries", lambda c: [layer(*(f(f"e{i}") for i in range(MAX_ENTRIES + 1)))],
         EXHAUSTED, ("{l0}", "--max-entries")),
    Case("deep_path_whose_implicit_directories_exceed_max_entries",
         lambda c: [layer(f("/".join(["d"] * (MAX_ENTRIES + 10)), b"x"))], EXHAUSTED, ("{l0}", "--max-entries")),
    Case("more_layers_than_max_layers", lambda c: [layer(f("same", b"x"))] * 129, EXHAUSTED, ("129", "--max-layers")),
    Case("pax_header_larger_than_one_mib", lambda c: [big_pax_header((1 << 20) + 4096)], INVALID, ("{l0}", "header")),
    Case("sparse_header_with_a_negative_size_moving_the_next_header_backwards", lambda c: [sparse_with_negative_size()],
         INVALID, ("{l0}", "sparse", "size")),
    Case("hundreds_of_chained_pax_headers", lambda c: [chained_pax_headers(2000)], INVALID, ("{l0}",)),
    # -- broken encodings ----------------------------------------------------------------------------------
    Case("truncated_gzip_layer", lambda c: [truncated(layer(f("a", os.urandom(4096))), 1000)], INVALID, ("{l0}", "gzip")),
    Case("gzip_layer_with_trailing_garbage", lambda c: [Blob(gz(tar(f("a", b"x"))) + b"garbage!" * 8, TGZ)],
         INVALID, ("{l0}", "gzip")),
    Case("truncated_zstd_layer", lambda c: [truncated(layer(f("a", os.urandom(4096)), media_type=TZST), 1000)],
         INVALID, ("{l0}", "zstd")),
    Case("zstd_layer_cut_between_frames_is_not_a_shorter_archive", lambda c: [zstd_cut_between_frames()],
         INVALID, ("{l0}", "zstd")),
    Case("gzip_of_something_that_is_not_a_tar", lambda c: [Blob(gz(os.urandom(3000)), KLAUS)], INVALID, ("{l0}", "tar")),
    Case("tar_cut_inside_a_files_data", lambda c: [Blob(tar(f("a", b"x"), f("b", os.urandom(5000)))[:2000], TAR)],
         INVALID, ("{l0}", "'b'")),
    Case("sparse_file", lambda c: [layer(special("sparse", tarfile.GNUTYPE_SPARSE), fmt=tarfile.GNU_FORMAT)],
         INVALID, ("{l0}", "sparse")),
    Case("untitled_layer_of_an_unknown_media_type", lambda c: [Blob(b"\x7fELF...", "application/octet-stream")],
         INVALID, ("{l0}", "application/octet-stream")),
]


@pytest.fixture(scope="module")
def good(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_klaus(registry, "hostile/good:v1", PLUGIN_TREE, tmp_path_factory.mktemp("good")).reference


@pytest.fixture(scope="module", params=["bind", "fuse", "erofs"])
def driver(request: pytest.FixtureRequest, registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    with run_driver(tmp_path_factory.mktemp(f"hostile-{request.param}"), registry, request.param, LIMITS) as d:
        yield d


_pushed: dict[str, tuple[str, list[Blob]]] = {}


def pushed(registry: str, case: Case, canary: Canary) -> tuple[str, list[Blob]]:
    if case.name not in _pushed:
        blobs = case.build(str(canary.dir))
        reference = push_manifest(registry, f"hostile/{case.name.replace('_', '-')}:v1", blobs,
                                  config_type=case.config_type)
        _pushed[case.name] = (reference, blobs)
    return _pushed[case.name]


def test_the_corpus_is_big_enough_and_named_once() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) >= 40


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_archive(case: Case, driver: Driver, registry: str, canary: Canary, good: str, kubelet_root: Path) -> None:
    reference, blobs = pushed(registry, case, canary)
    watch = Watch(canary, driver.state_dir, kubelet_root)
    before = watch.snapshot()
    target = target_for(kubelet_root, "pod-hostile", "volume")
    request = publish_request(target, {"reference": reference})
    expect(driver, request, case.code, case.words(blobs, str(canary.dir)))
    if case.code is None:
        try:
            assert case.check is not None
            case.check(target, str(canary.dir))
            assert canary.victim.read_bytes() == VICTIM
        finally:
            driver.unpublish(unpublish_request(request))
    watch.assert_unchanged(before)
    assert_still_serves(driver, good, kubelet_root)
