"""Property-based fuzzing of every parser a hostile artifact or pod author reaches (issue 7), with a
small budget for CI; ``bench/fuzz_layout.py`` is the long run (SECURITY.md has its result).

* ``layout.build_tree``: whatever the archives, it returns a tree whose entries all lie inside
  it and are never reached through a symlink (``fuzzing.check_tree``), or refuses with a
  ``DriverError``; never anything else. Two generators: a structured one over a hostile
  alphabet of names, links and whiteouts (it shrinks to a readable counterexample), and the
  byte-level one of the long run (bad headers, PAX records, truncations), which also checks
  that the fast header parser and plain ``tarfile`` agree.
* ``reference.parse_reference``: a Reference or InvalidArgument; ``str()`` parses back to
  the same Reference; everything the grammar allows parses.
* ``manifest.parse``: any JSON or bytes give a document or a DriverError.
* ``spec.check_target_path``: an absolute normalised path without ``..``, or InvalidArgument.
"""

from __future__ import annotations

import io
import json
import string
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fuzzing
from csi_driver import errors
from csi_driver.csi.spec import check_target_path
from csi_driver.layout import manifest
from csi_driver.layout.rules import TITLE, UNPACK, Layer, Limits
from csi_driver.layout.tree import blob_relpath, decoded_relpath
from csi_driver.reference import Reference, parse_reference

BUDGET = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- layout: structured archives -------------------------------------------------------------------

COMPONENTS = ["a", "b", "c", ".", "..", "", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh..", ".wh...", "\udcff", "n" * 256]
LINKS = ["a", "b", "..", "../..", "/", "/tmp/PWNED", "a/b", ".", "c/../..", "b/a"]
names = st.builds(
    lambda prefix, parts: prefix + "/".join(parts),
    st.sampled_from(["", "", "", "./", "/", "../"]),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4),
)
members = st.lists(
    st.tuples(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo"]), names, st.sampled_from(LINKS) | names),
    max_size=10,
)
layer_specs = st.lists(
    st.tuples(members, st.sampled_from(["image", "image", "image", "oras-dir"]), st.sampled_from(["a", "b", "a/b", "..", "/a"])),
    min_size=1,
    max_size=3,
)


def write_layer(state: Path, index: int, spec: list[tuple[str, str, str]], rule: str, title: str) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as tar:
        for kind, name, target in spec:
            info = tarfile.TarInfo(name)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
            data = name.encode("utf-8", "surrogateescape") if kind == "file" else b""
            info.size, info.linkname = len(data), target if kind in ("symlink", "hardlink") else ""
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    digest = "sha256:%064x" % (index + 1)
    (state / blob_relpath(digest)).parent.mkdir(parents=True, exist_ok=True)
    (state / blob_relpath(digest)).write_bytes(buf.getvalue())
    annotations = {TITLE: title, UNPACK: "true"} if rule == "oras-dir" else {}
    return Layer(digest, fuzzing.TAR, annotations, len(buf.getvalue()))


@BUDGET
@given(specs=layer_specs)
@example(specs=[([("symlink", "esc", "/tmp/PWNED"), ("file", "esc/x", "")], "image", "a")])
@example(specs=[([("dir", "d", ""), ("symlink", "d", ".."), ("file", "d/x", "")], "image", "a")])
@example(specs=[([("symlink", "a", "b"), ("symlink", "b", "/"), ("hardlink", "h", "a/etc/passwd")], "image", "a")])
@example(specs=[([("file", "a", "")], "image", "a"), ([("file", "a/.wh...", "")], "image", "a")])
def test_build_tree_never_places_an_entry_outside_the_tree_or_through_a_symlink(specs) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        placed = [write_layer(state, i, spec, rule, title) for i, (spec, rule, title) in enumerate(specs)]
        fuzzing.build(state, placed, Limits(max_entries=64, max_unpacked_bytes=1 << 20))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63))
@example(seed=153174)  # the long run's finds: a GNU sparse header with a huge negative size
@example(seed=497813)
@example(seed=970871)
def test_build_tree_on_byte_level_hostile_archives_and_the_fast_parser_agrees_with_tarfile(seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        placed = fuzzing.layers(seed, state)
        got = fuzzing.build(state, placed)
        with fuzzing.plain_tarfile_only():
            assert fuzzing.same(got, fuzzing.build(state, placed)), seed


PAX_KEYS = ["path", "linkpath", "size", "uid", "gid", "mtime", "atime", "uname", "comment", "hdrcharset",
            "GNU.sparse.name", "GNU.sparse.size", "SCHILY.xattr.user.a"]  # fmt: skip
PAX_VALUES = ["a", "a/", "./b/c", "../x", "/etc/x", "5", "-1", "0", "1.5", "nan", " 7 ", "1_0", "x", "BINARY", ""]


def pax_archive(records: list[tuple[str, bytes]], kind: bytes, size: int, cut: int) -> bytes:
    """Two members, each after a pax ``x`` header of ``records`` (cut to ``cut`` bytes when less),
    then a plain one: tarfile reads the first itself when it opens the archive, the second is the
    fast parser's, the third shows where the second said the next header starts (tarfile ends an
    archive quietly at a bad header)."""
    body = b"".join(fuzzing._pax_record(key.encode(), value) for key, value in records)[:cut]
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(body)
    out = b""
    for name in ("first", "second", "third"):
        member = tarfile.TarInfo(f"{name}/" if kind == tarfile.DIRTYPE else name)
        member.type, member.size, member.uid, member.gid, member.mtime = kind, size, 7, 8, 1_700_000_000
        member.linkname = "target" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
        data = b"d" * size if kind == tarfile.REGTYPE else b""
        if name != "third":
            out += pax.tobuf(tarfile.USTAR_FORMAT) + fuzzing._padded(body)
        out += member.tobuf(tarfile.USTAR_FORMAT) + fuzzing._padded(data)
    return out + b"\0" * 1024


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.tuples(st.sampled_from(PAX_KEYS), st.sampled_from(PAX_VALUES).map(str.encode) | st.binary(max_size=8)),
        max_size=4,
    ),
    kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]),
    size=st.sampled_from([0, 3, 600]),
    cut=st.integers(min_value=0, max_value=200),
)
def test_pax_headers_read_by_the_fast_parser_as_tarfile_reads_them(records, kind, size, cut) -> None:
    """Tools that write a pax header before every entry (Python's tarfile, oras-go) take the fast path."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        data = pax_archive(records, kind, size, cut)
        digest = "sha256:%064x" % 1
        (state / blob_relpath(digest)).parent.mkdir(parents=True, exist_ok=True)
        (state / blob_relpath(digest)).write_bytes(data)
        placed = [Layer(digest, fuzzing.TAR, {}, len(data))]
        got = fuzzing.build(state, placed)
        with fuzzing.plain_tarfile_only():
            assert fuzzing.same(got, fuzzing.build(state, placed))


def test_the_byte_level_generator_reaches_both_answers() -> None:
    """A generator that only ever produced refusals (or only trees) would prove little."""
    with tempfile.TemporaryDirectory() as tmp:
        answers = [fuzzing.build(Path(tmp), fuzzing.layers(seed, Path(tmp))) for seed in range(300)]
    trees = [a for a in answers if isinstance(a, list)]
    assert 30 < len(trees) < 270
    assert sum(len(t) for t in trees) > 3 * len(trees)


def test_an_inflated_layer_is_read_from_its_decoded_tar(tmp_path: Path) -> None:
    """The byte-level generator writes compressed layers' decoded tars where the store keeps them."""
    for seed in range(200):
        for layer in fuzzing.layers(seed, tmp_path):
            if layer.media_type != fuzzing.TAR and layer.media_type != "text/plain":
                assert (tmp_path / decoded_relpath(layer.digest)).is_file()
                return
    pytest.fail("no compressed layer in 200 seeds")


# -- references -----------------------------------------------------------------------------------

REF_ALPHABET = string.ascii_letters + string.digits + "._-:/@" + " \n\0é"
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
alnum_lower = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
label = st.builds(lambda a, b: a + ("-" + b if b else ""), alnum_lower, st.none() | alnum_lower)
domain = st.one_of(
    st.just(""),
    st.builds(lambda labels, port: ".".join(labels) + port, st.lists(label, min_size=2, max_size=3),
              st.sampled_from(["", ":5000", ":1"])),  # fmt: skip
    st.sampled_from(["localhost", "localhost:5000", "[::1]:5000", "Registry:5000"]),
)
path_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    alnum_lower, st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--"]), alnum_lower), max_size=2),
)  # fmt: skip
tag = st.builds(lambda a, b: a + b, st.sampled_from(list(string.ascii_letters + string.digits + "_")),
                st.text(string.ascii_letters + string.digits + "_.-", max_size=12))  # fmt: skip


def _unambiguous(dom: str, parts: list[str]) -> bool:
    """Without a registry, a first component with a '.' would be read as one, as Docker reads it."""
    return bool(dom) or len(parts) == 1 or "." not in parts[0]


valid_refs = st.tuples(domain, st.lists(path_component, min_size=1, max_size=3), st.none() | tag, st.none() | hex64).filter(
    lambda t: _unambiguous(t[0], t[1])
).map(lambda t: (f"{t[0]}/" if t[0] else "") + "/".join(t[1]) + (f":{t[2]}" if t[2] else "") + (f"@sha256:{t[3]}" if t[3] else ""))


def _round_trips(ref: Reference) -> None:
    again = parse_reference(str(ref))
    assert again == ref, (str(ref), again)
    assert str(again) == str(ref)


@BUDGET
@given(text=st.text(REF_ALPHABET, max_size=80) | valid_refs.map(lambda s: s[: len(s) // 2] + "/" + s[len(s) // 2 :]))
def test_parse_reference_gives_a_reference_or_invalid_argument_and_round_trips(text: str) -> None:
    try:
        ref = parse_reference(text)
    except errors.InvalidArgument as exc:
        assert repr(text) in exc.message
        return
    _round_trips(ref)
    assert ref.repository and ".." not in ref.repository.split("/")
    assert not any(c in str(ref) for c in " \n\0")


@BUDGET
@given(text=valid_refs)
def test_every_reference_the_grammar_allows_parses_and_keeps_tag_and_digest(text: str) -> None:
    ref = parse_reference(text)
    _round_trips(ref)
    if "@" in text:
        assert ref.digest == text.rpartition("@")[2]
    name = text.partition("@")[0]
    if name.rfind(":") > name.rfind("/"):
        assert ref.tag == name.rpartition(":")[2]
    else:
        assert ref.tag is None


# -- manifests and target paths ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["mediaType", "layers", "manifests", "config", "digest", "size", "annotations", "platform",
                         "os", "architecture", "variant", "x"]), inner, max_size=5),  # fmt: skip
    max_leaves=20,
)


@BUDGET
@given(doc=json_values, header=st.sampled_from(["", *manifest.INDEX_TYPES, *manifest.MANIFEST_TYPES, "text/html"]))
def test_manifest_parse_gives_a_document_or_a_driver_error(doc: object, header: str) -> None:
    for data in (json.dumps(doc).encode(), json.dumps(doc).encode()[:-1]):
        try:
            parsed = manifest.parse(data, header, "registry.example/x@sha256:" + "0" * 64)
        except errors.DriverError:
            continue
        for descriptor in parsed.layers if isinstance(parsed, manifest.ImageManifest) else parsed.manifests:
            assert descriptor.size >= 0 and descriptor.digest.startswith("sha256:")


@BUDGET
@given(target=st.text(alphabet="/.ab\0 ", max_size=30))
def test_check_target_path_gives_an_absolute_path_without_dotdot_or_invalid_argument(target: str) -> None:
    try:
        path = check_target_path(target)
    except errors.InvalidArgument:
        return
    assert path.startswith("/") and "\0" not in path
    assert ".." not in path.split("/")
