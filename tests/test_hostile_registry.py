"""The lying registry (issue 7): a scripted HTTP registry on loopback that corrupts, truncates,
stalls, redirects and bloats, published through the real ``serve``.

Each case scripts one repository of the stub and publishes it; the driver must answer the code
of docs/errors.md with a message naming the digest, host or flag, leave nothing behind
(``hostile.Watch``) and still publish a good plugin from the real registry afterwards. The data
plane does not matter here (nothing lying gets that far), so one bind-mode driver serves the
module, with ``--registry-timeout 1`` so that stalls are quick, and ``--max-unpacked-bytes 16MiB``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from artifacts import PLUGIN_TREE, push_klaus
from driver import Driver, run_driver, walk
from hostile import (
    OCI_MANIFEST,
    TAR,
    TGZ,
    TZST,
    Blob,
    Canary,
    Watch,
    assert_still_serves,
    expect,
    f,
    layer,
    manifest_of,
    sha256,
)
from kubelet import publish_request, target_for, unpublish_request
from stub_registry import Answer, FakeRegistry, Seen, serve_stub

INDEX = "application/vnd.oci.image.index.v1+json"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DATA_LOSS = grpc.StatusCode.DATA_LOSS
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FOUR_MIB = 4 << 20


@dataclass
class Lie:
    """One scripted repository: what its tag, manifest and blobs answer.

    ``tag`` is ``repo:tag``; the manifest is ``manifest`` (default: one tar layer with a file
    named after the case) served by tag and by digest with ``content_type``; ``answers``
    override any (method, path) of the repository afterwards (``{m}`` is the manifest digest,
    ``{b}`` the layer's, of ``media_type``). ``reference`` says how the pod names it: by tag or
    by ``@digest``.
    """

    name: str
    code: grpc.StatusCode | None
    says: tuple[str, ...] = ()
    manifest: Callable[[Blob], bytes] | None = None
    content_type: str = OCI_MANIFEST
    answers: Callable[[FakeRegistry, str, str, bytes, Blob], dict[tuple[str, str], list]] = field(
        default=lambda stub, m, b, manifest, blob: {}
    )
    by_digest: bool = False
    media_type: str = TAR
    fetches_no_blob: bool = False
    check: Callable[[Path], None] | None = None

    @property
    def repo(self) -> str:
        return "lies/" + self.name.replace("_", "-")


STALL = threading.Event()  # set at module teardown, so stalled handler threads end


def stall(answer: Answer) -> Callable[[Seen], Answer]:
    def stalled(request: Seen) -> Answer:
        STALL.wait(30)
        return answer

    return stalled


def body(*pieces: bytes, then_stall: bool = False) -> Iterator[bytes]:
    yield from pieces
    if then_stall:
        STALL.wait(30)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def other_bytes(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def manifest_without_media_type(blob: Blob) -> bytes:
    doc = json.loads(manifest_of([blob]))
    del doc["mediaType"]
    return json.dumps(doc).encode()


def with_layer(**changes: object) -> Callable[[Blob], bytes]:
    def make(blob: Blob) -> bytes:
        doc = json.loads(manifest_of([blob]))
        doc["layers"][0].update(changes)
        return json.dumps(doc).encode()

    return make


def index_of(digest: str, media_type: str = OCI_MANIFEST) -> bytes:
    entry = {"mediaType": media_type, "digest": digest, "size": 10, "platform": {"os": "linux", "architecture": "amd64"}}
    return json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]}).encode()


def blob_path(lie: Lie, digest: str) -> tuple[str, str]:
    return ("GET", f"/v2/{lie.repo}/blobs/{digest}")


def manifest_path(lie: Lie, ref: str, method: str = "GET") -> tuple[str, str]:
    return (method, f"/v2/{lie.repo}/manifests/{ref}")


def check_one_file(name: str) -> Callable[[Path], None]:
    def check(target: Path) -> None:
        assert walk(target) == {name: ("file", 0o644, 0, 0, name.encode())}

    return check


LIES: list[Lie] = [
    # -- bytes that do not match their digest ------------------------------------------------------
    Lie("blob_bytes_that_do_not_match_their_digest", DATA_LOSS, ("{b}", "digest"),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, other_bytes(blob.data))]}),
    Lie("gzip_layer_whose_bytes_are_neither_gzip_nor_its_digests", DATA_LOSS, ("{b}", "digest"), media_type=TGZ,
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, other_bytes(blob.data))]}),
    Lie("zstd_layer_whose_bytes_are_neither_zstd_nor_its_digests", DATA_LOSS, ("{b}", "digest"), media_type=TZST,
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, other_bytes(blob.data))]}),
    Lie("manifest_by_digest_whose_bytes_are_neither_json_nor_its_digests", DATA_LOSS, ("{m}",), by_digest=True,
        answers=lambda s, m, b, man, blob: {("GET", "manifest-digest"): [(200, {"Content-Type": OCI_MANIFEST}, b"<html>")]}),
    Lie("manifest_by_tag_whose_bytes_are_neither_json_nor_the_digest_it_is_served_as", DATA_LOSS, ("{m}",),
        answers=lambda s, m, b, man, blob: {("GET", "manifest-tag"): [
            (200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": m}, b"<html>")]}),
    Lie("manifest_by_tag_whose_bytes_hash_differently", DATA_LOSS, ("{m}",),
        answers=lambda s, m, b, man, blob: {("GET", "manifest-tag"): [
            (200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": m}, man + b" ")]}),
    Lie("manifest_by_digest_whose_bytes_hash_differently", DATA_LOSS, ("{m}",), by_digest=True,
        answers=lambda s, m, b, man, blob: {("GET", "manifest-digest"): [(200, {"Content-Type": OCI_MANIFEST}, other_bytes(man))]}),
    Lie("blob_larger_than_its_declared_size", DATA_LOSS, ("{b}", "more than"),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, blob.data + b"\0" * 4096)]}),
    Lie("blob_smaller_than_its_declared_size", DATA_LOSS, ("{b}",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, blob.data[:-100])]}),
    # -- truncated bodies --------------------------------------------------------------------------------
    Lie("blob_body_cut_short_of_its_content_length", UNAVAILABLE, ("{b}", "broke off"),
        answers=lambda s, m, b, man, blob: {
            ("GET", "blob"): [(200, {"Content-Length": str(len(blob.data))}, body(blob.data[:100]))]}),
    Lie("blob_body_cut_short_without_a_content_length", DATA_LOSS, ("{b}",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {}, body(blob.data[:100]))]}),
    Lie("manifest_body_cut_short_of_its_content_length", UNAVAILABLE, ("{m}",), by_digest=True,
        answers=lambda s, m, b, man, blob: {("GET", "manifest-digest"): [
            (200, {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(man))}, body(man[:20]))]}),
    # -- garbage manifests ---------------------------------------------------------------------------------
    Lie("manifest_that_is_not_json", INVALID, ("{m}", "not JSON"), manifest=lambda blob: b"<html>hello</html>"),
    Lie("manifest_that_is_a_json_array", INVALID, ("{m}", "not a JSON object"), manifest=lambda blob: b"[1, 2]"),
    Lie("manifest_nested_a_hundred_thousand_deep", INVALID, ("{m}",), manifest=lambda blob: nested(100_000)),
    Lie("manifest_whose_media_type_is_a_list", INVALID, ("{m}", "mediaType"),
        manifest=lambda blob: json.dumps({"mediaType": [OCI_MANIFEST], "layers": []}).encode()),
    Lie("manifest_with_a_layer_digest_that_is_a_path", INVALID, ("{m}", "etc/passwd"),
        manifest=with_layer(digest="sha256:../../../../etc/passwd"), fetches_no_blob=True),
    Lie("manifest_with_a_negative_layer_size", INVALID, ("{m}", "size"), manifest=with_layer(size=-1), fetches_no_blob=True),
    Lie("manifest_with_a_layer_size_that_is_a_string", INVALID, ("{m}", "size"), manifest=with_layer(size="12"),
        fetches_no_blob=True),
    Lie("manifest_with_a_layer_size_that_is_true", INVALID, ("{m}", "size"), manifest=with_layer(size=True),
        fetches_no_blob=True),
    Lie("index_inside_an_index", INVALID, ("index inside an index",),
        manifest=lambda blob: index_of(sha256(index_of(sha256(b"x"))), INDEX),
        answers=lambda s, m, b, man, blob: {("GET", "inner"): [(200, {"Content-Type": INDEX}, index_of(sha256(b"x")))]}),
    Lie("index_entry_whose_digest_is_not_sha256", INVALID, ("md5:",), manifest=lambda blob: index_of("md5:abc")),
    # -- content types that lie --------------------------------------------------------------------------
    Lie("wrong_content_type_is_ignored", None, content_type="text/html", check=check_one_file("wrong-content-type-is-ignored")),
    Lie("manifest_without_media_type_served_as_an_index_is_read_by_its_content", None, content_type=INDEX,
        manifest=manifest_without_media_type,
        check=check_one_file("manifest-without-media-type-served-as-an-index-is-read-by-its-content")),
    Lie("docker_content_digest_header_that_is_a_path_is_not_trusted", None,
        answers=lambda s, m, b, man, blob: {("HEAD", "manifest-tag"): [
            (200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:../../../etc"}, man)]},
        check=check_one_file("docker-content-digest-header-that-is-a-path-is-not-trusted")),
    # -- failing, stalling, bloating -----------------------------------------------------------------------
    Lie("registry_answering_503_forever", UNAVAILABLE, ("HTTP 503",),
        answers=lambda s, m, b, man, blob: {(method, "manifest-tag"): [(503, {}, b"")] for method in ("HEAD", "GET")}),
    Lie("blob_answering_500_forever", UNAVAILABLE, ("{b}", "HTTP 500"),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(500, {}, b"")]}),
    Lie("registry_that_never_answers_the_tag", UNAVAILABLE, ("--registry-timeout",),
        answers=lambda s, m, b, man, blob: {(method, "manifest-tag"): [stall((200, {}, b""))] for method in ("HEAD", "GET")}),
    Lie("blob_that_stalls_halfway", UNAVAILABLE, ("{b}",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [
            (200, {"Content-Length": str(len(blob.data))}, body(blob.data[:50], then_stall=True))]}),
    Lie("response_header_of_100_kib", UNAVAILABLE, ("{b}",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(200, {"X-Pad": "p" * 100_000}, blob.data)]}),
    Lie("manifest_over_max_manifest_bytes_with_a_content_length", EXHAUSTED, ("{m}", "--max-manifest-bytes"),
        manifest=lambda blob: json.dumps({"layers": [], "pad": "x" * FOUR_MIB}).encode(), by_digest=True),
    Lie("manifest_by_tag_over_max_manifest_bytes", EXHAUSTED, (":v1", "--max-manifest-bytes"),
        manifest=lambda blob: json.dumps({"layers": [], "pad": "t" * FOUR_MIB}).encode()),
    Lie("manifest_over_max_manifest_bytes_streamed_without_a_length", EXHAUSTED, ("{m}", "--max-manifest-bytes"), by_digest=True,
        manifest=lambda blob: json.dumps({"layers": [], "pad": "y" * FOUR_MIB}).encode(),
        answers=lambda s, m, b, man, blob: {("GET", "manifest-digest"): [
            (200, {"Content-Type": OCI_MANIFEST}, body(*(man[i:i + 65536] for i in range(0, len(man), 65536))))]}),
    Lie("more_layers_than_max_layers_fetches_no_blob", EXHAUSTED, ("129", "--max-layers"),
        manifest=lambda blob: manifest_of([blob] * 129), fetches_no_blob=True),
    Lie("declared_layer_sizes_past_max_unpacked_bytes_fetch_nothing", EXHAUSTED, ("--max-unpacked-bytes",),
        manifest=with_layer(size=1 << 40), fetches_no_blob=True),
    # -- redirects ------------------------------------------------------------------------------------------
    Lie("blob_redirected_to_a_plain_http_host_not_allowed", UNAVAILABLE, ("plain-HTTP", "--insecure-registry"),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(307, {"Location": "http://localhost:9/steal"}, b"")]}),
    Lie("blob_redirected_in_a_loop", UNAVAILABLE, ("redirected more than",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(302, {"Location": f"/v2/lies/blob-redirected-in-a-loop/blobs/{b}"}, b"")]}),
    Lie("blob_redirected_to_a_file_url", UNAVAILABLE, ("scheme 'file'",),
        answers=lambda s, m, b, man, blob: {("GET", "blob"): [(302, {"Location": "file:///etc/shadow"}, b"")]}),
    # -- auth and error bodies -------------------------------------------------------------------------------
    Lie("token_service_answering_deeply_nested_json", UNAVAILABLE, ("sent no token",),
        answers=lambda s, m, b, man, blob: {
            **{(method, "manifest-tag"): [(401, {"WWW-Authenticate": f'Bearer realm="http://{s.host}/token-nested"'}, b"")]
               for method in ("HEAD", "GET")},
            ("GET", "/token-nested"): [(200, {"Content-Type": "application/json"}, nested(50_000))]}),
    Lie("error_body_nested_deeply_on_a_404", NOT_FOUND, ("{m}", "not found"), by_digest=True,
        answers=lambda s, m, b, man, blob: {("GET", "manifest-digest"): [(404, {"Content-Type": "application/json"}, nested(2000))]}),
]


def script(stub: FakeRegistry, lie: Lie) -> tuple[str, str, str]:
    """Script ``lie`` on the stub; return the reference, manifest digest and layer digest."""
    blob = layer(f(lie.repo.split("/", 1)[1], lie.repo.split("/", 1)[1].encode()), media_type=lie.media_type)
    manifest = lie.manifest(blob) if lie.manifest else manifest_of([blob])
    m, b = sha256(manifest), blob.digest
    headers = {"Content-Type": lie.content_type, "Docker-Content-Digest": m}
    stub.on(*manifest_path(lie, "v1", "HEAD"), (200, headers, manifest))
    stub.on(*manifest_path(lie, "v1"), (200, headers, manifest))
    stub.on(*manifest_path(lie, m), (200, headers, manifest))
    stub.on(*blob_path(lie, b), (200, {}, blob.data))
    stub.on(*blob_path(lie, sha256(b"{}")), (200, {}, b"{}"))
    for (method, what), answers in lie.answers(stub, m, b, manifest, blob).items():
        path = {
            "blob": blob_path(lie, b)[1],
            "manifest-digest": manifest_path(lie, m)[1],
            "manifest-tag": manifest_path(lie, "v1")[1],
            "inner": manifest_path(lie, sha256(index_of(sha256(b"x"))))[1],
        }.get(what, what)
        stub.on(method, path, *answers)
    reference = f"{stub.host}/{lie.repo}" + (f"@{m}" if lie.by_digest else ":v1")
    return reference, m, b


@pytest.fixture(scope="module")
def stub() -> Iterator[FakeRegistry]:
    with serve_stub() as scripted:
        yield scripted
        STALL.set()


@pytest.fixture(scope="module")
def good(registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return push_klaus(registry, "lies/good:v1", PLUGIN_TREE, tmp_path_factory.mktemp("good")).reference


@pytest.fixture(scope="module")
def driver(registry: str, stub: FakeRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    extra = ["--insecure-registry", stub.host, "--registry-timeout", "1", "--max-unpacked-bytes", "16MiB"]
    with run_driver(tmp_path_factory.mktemp("lies"), registry, "bind", extra) as d:
        yield d


def test_the_lies_are_many_and_named_once() -> None:
    names = [lie.name for lie in LIES]
    assert len(names) == len(set(names)) >= 30


@pytest.mark.parametrize("lie", LIES, ids=[lie.name for lie in LIES])
def test_lying_registry(lie: Lie, driver: Driver, stub: FakeRegistry, canary: Canary, good: str, kubelet_root: Path) -> None:
    reference, m, b = script(stub, lie)
    watch = Watch(canary, driver.state_dir, kubelet_root)
    before = watch.snapshot()
    target = target_for(kubelet_root, "pod-lied-to", "volume")
    request = publish_request(target, {"reference": reference})
    expect(driver, request, lie.code, [text.format(m=m, b=b) for text in lie.says])
    if lie.code is None:
        try:
            assert lie.check is not None
            lie.check(target)
        finally:
            driver.unpublish(unpublish_request(request))
    if lie.fetches_no_blob:
        assert not [s for s in stub.seen if s.path.startswith(f"/v2/{lie.repo}/blobs/")]
    if lie.code is not None:  # nothing of the refused layer is named in the store
        hexpart = b.removeprefix("sha256:")
        assert not (driver.state_dir / "blobs" / "sha256" / hexpart).exists()
        assert not (driver.state_dir / "layers" / "sha256" / f"{hexpart}.tar").exists()
    watch.assert_unchanged(before)
    assert_still_serves(driver, good, kubelet_root)


def test_a_registry_that_closes_every_connection_is_unavailable(driver: Driver, good: str, canary: Canary,
                                                               kubelet_root: Path) -> None:  # fmt: skip
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    host = "127.0.0.1:%d" % listener.getsockname()[1]

    def slam() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=slam, daemon=True).start()
    try:
        watch = Watch(canary, driver.state_dir, kubelet_root)
        before = watch.snapshot()
        request = publish_request(target_for(kubelet_root, "pod-slammed", "volume"), {"reference": f"{host}/x/y:v1"})
        expect(driver, request, UNAVAILABLE, (host,))
        watch.assert_unchanged(before)
    finally:
        listener.close()
    assert_still_serves(driver, good, kubelet_root)
