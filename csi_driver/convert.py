"""``oci-volume-csi convert``: rewrite native image volumes as this driver's inline ``csi:`` volumes.

A manifest written for Kubernetes ≥ 1.35 mounts artifacts with ``volumes[].image``, which older API
servers refuse. The ``csi:`` volume that replaces it has the same meaning: the volume attributes
carry the image volume source's own fields (``reference``, ``pullPolicy``, same names, same
defaults), and the pod's pull secret becomes ``nodePublishSecretRef``.

The YAML is edited round-trip (ruamel.yaml) and one document at a time: a document with no image
volume comes out byte for byte, and a converted one keeps its comments, key order, quoting and
indentation, so the diff a reviewer sees is the volumes and nothing else.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from csi_driver import DEFAULT_DRIVER_NAME

# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}

# A line that starts a YAML document; it ends any block scalar, so splitting on it is exact.
_DOCUMENT_START = re.compile(r"^---(?=[ \t\r\n]|$)", re.MULTILINE)
# A start line with nothing after it but a comment: kept verbatim (ruamel would mangle the comment).
_BARE_START = re.compile(r"---[ \t]*(#[^\n]*)?\n")

SECRET_COMMENT = "from imagePullSecrets; the Secret must be in the pod's namespace"


@dataclass(frozen=True)
class Converted:
    """One ``image`` volume rewritten, as the messages on stderr name it."""

    kind: str
    name: str
    volume: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: volume {self.volume}"


def pod_specs(document: object) -> Iterator[tuple[dict, dict]]:
    """``(object, its pod spec)`` for each workload in a document (or in a ``kind: List``)."""
    if not isinstance(document, dict):
        return
    if document.get("kind") == "List":
        for item in document.get("items") or []:
            yield from pod_specs(item)
        return
    node: object = document
    for key in POD_SPEC_PATHS.get(str(document.get("kind")), ()):
        node = node.get(key) if isinstance(node, dict) else None
    if node is not document and isinstance(node, dict):
        yield document, node


def _csi_volume(volume: CommentedMap, spec: dict, driver: str) -> None:
    """Replace ``volume["image"]`` by the equivalent ``csi`` source, in the same place."""
    position = list(volume).index("image")
    attributes = volume.pop("image")
    csi = CommentedMap(driver=driver, readOnly=True)
    secrets = spec.get("imagePullSecrets") or []
    if secrets:
        csi["nodePublishSecretRef"] = CommentedMap(name=secrets[0]["name"])
        unused = f"; {len(secrets) - 1} more not used (one secret per volume)" if len(secrets) > 1 else ""
        csi.yaml_add_eol_comment(SECRET_COMMENT + unused, "nodePublishSecretRef")
        _give_lines(volume, spec["volumes"])
    # The image source's fields are the attribute names: its map moves as it is, with its comments.
    csi["volumeAttributes"] = attributes
    volume.insert(position, "csi", csi)
    if "image" in volume.ca.items:  # a comment on the `image:` line stays on that line, now `csi:`
        volume.ca.items["csi"] = volume.ca.items.pop("image")
        if isinstance(attributes, CommentedMap) and attributes.ca.comment:
            attributes.ca.comment[0] = None  # ruamel keeps that comment on the nested map too


def _give_lines(volume: CommentedMap, volumes: object) -> None:
    """Write a flow-style volume (``{name: x, image: {...}}``) in block style: a comment needs a line."""
    if volume.fa.flow_style():
        volume.fa.set_block_style()
        if isinstance(volumes, CommentedSeq):
            volumes.fa.set_block_style()  # a block mapping cannot sit in a flow sequence


def _convert_data(data: object, driver: str) -> list[Converted]:
    converted = []
    for owner, spec in pod_specs(data):
        for volume in spec.get("volumes") or []:
            if isinstance(volume, CommentedMap) and "image" in volume:
                _csi_volume(volume, spec, driver)
                name = (owner.get("metadata") or {}).get("name", "?")
                converted.append(Converted(str(owner.get("kind")), str(name), str(volume.get("name"))))
    return converted


def split_documents(text: str) -> list[str]:
    """The documents of a YAML stream, each with its own ``---`` line; they join back to ``text``."""
    bounds = [0, *(m.start() for m in _DOCUMENT_START.finditer(text) if m.start() > 0), len(text)]
    return [text[start:end] for start, end in pairwise(bounds) if end > start]


def convert_document(text: str, driver: str = DEFAULT_DRIVER_NAME) -> tuple[str, list[Converted]]:
    """One YAML document, converted; unchanged text when it has no image volume."""
    head = ""
    if (bare := _BARE_START.match(text)) is not None:
        head, text = text[: bare.end()], text[bare.end() :]
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long line that was not folded
    yaml.brace_single_entry_mapping_in_flow_sequence = True  # [{name: x}] stays so, not [name: x]
    data = yaml.load(text)
    converted = _convert_data(data, driver)
    if not converted:
        return head + text, []
    _, indent, offset = load_yaml_guess_indent(text)
    yaml.indent(mapping=2, sequence=indent or 2, offset=offset or 0)
    yaml.explicit_start = text.startswith("---")
    out = io.StringIO()
    yaml.dump(data, out)
    return head + out.getvalue(), converted


def convert(text: str, driver: str = DEFAULT_DRIVER_NAME) -> tuple[str, list[Converted]]:
    """A multi-document YAML stream with every image volume rewritten as a ``csi`` volume."""
    parts, converted = [], []
    for document in split_documents(text):
        new, done = convert_document(document, driver)
        parts.append(new)
        converted += done
    return "".join(parts), converted


def run(path: str, check: bool, driver: str = DEFAULT_DRIVER_NAME) -> int:
    """The subcommand: the converted YAML on stdout, or with ``check`` only what would change.

    Exit 0 when done (or, with ``check``, nothing to change), 1 when ``check`` found image
    volumes, 2 when the input cannot be read as YAML.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        new, converted = convert(text, driver)
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        print(f"oci-volume-csi convert: {path}: {exc}", file=sys.stderr)
        return 2
    for item in converted:
        done = "would become" if check else "is now"
        print(f"{path}: {item}: image volume {done} a csi volume of {driver}", file=sys.stderr)
    if check:
        return 1 if converted else 0
    sys.stdout.write(new)
    return 0
