"""``oci-volume-csi convert``: rewrite native image volumes as this driver's inline ``csi:`` volumes.

A manifest written for Kubernetes ≥ 1.35 mounts artifacts with ``volumes[].image``, which older API
servers refuse. The ``csi:`` volume that replaces it has the same meaning: the volume attributes
carry the image volume source's own fields (``reference``, ``pullPolicy``, same names, same
defaults), and the pod's pull secret becomes ``nodePublishSecretRef`` (not when the cluster runs
the driver with ``--pod-pull-secrets``: it then reads ``imagePullSecrets`` itself, as the kubelet
does for an image volume). Inline volumes of warm-metal's image driver (``csi-image.warm-metal.tech``:
attributes ``image``, ``pullAlways``, ``secret``, ``secretNamespace``) are rewritten too, keeping
what they meant: ``pullAlways`` unset used the node's copy, so it becomes ``pullPolicy: IfNotPresent``
where this driver's default would be ``Always``, and ``secret`` becomes ``nodePublishSecretRef``.

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

from csi_driver import DEFAULT_DRIVER_NAME, errors
from csi_driver.reference import default_pull_policy, parse_reference

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
WARM_METAL_DRIVER = "csi-image.warm-metal.tech"


@dataclass(frozen=True)
class Converted:
    """One ``image`` volume rewritten, as the messages on stderr name it."""

    kind: str
    name: str
    volume: str
    source: str = "image volume"  # what it was: "image volume" or "warm-metal volume"
    notes: tuple[str, ...] = ()  # what could not be kept as it was, for stderr

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


def _csi_volume(volume: CommentedMap, spec: dict, driver: str, pod_pull_secrets: bool) -> None:
    """Replace ``volume["image"]`` by the equivalent ``csi`` source, in the same place."""
    position = list(volume).index("image")
    attributes = volume.pop("image")
    csi = CommentedMap(driver=driver, readOnly=True)
    secrets = [] if pod_pull_secrets else spec.get("imagePullSecrets") or []
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


def _from_warm_metal(csi: CommentedMap, namespace: object, driver: str) -> tuple[str, ...]:
    """Rewrite a warm-metal inline ``csi`` source in place as one of ``driver``; say what was lost."""
    notes = []
    attributes = csi.get("volumeAttributes")
    if not isinstance(attributes, CommentedMap):
        attributes = CommentedMap()
    renamed = CommentedMap()
    secret, secret_namespace = attributes.get("secret"), attributes.get("secretNamespace")
    for key, value in attributes.items():
        if key == "image":
            new_key = "reference"
            renamed[new_key] = value
        elif key == "pullAlways":
            new_key = "pullPolicy"
            renamed[new_key] = "Always" if str(value).lower() == "true" else "IfNotPresent"
        elif key in ("secret", "secretNamespace"):
            continue
        else:
            new_key = key
            renamed[key] = value
            notes.append(f"attribute {key} has no equivalent here; remove it (the driver refuses unknown attributes)")
        if key in attributes.ca.items:  # a comment on the line stays on it
            renamed.ca.items[new_key] = attributes.ca.items[key]
    if "pullPolicy" not in renamed and _defaults_to_always(renamed.get("reference")):
        renamed["pullPolicy"] = "IfNotPresent"  # warm-metal used the node's copy unless pullAlways
    csi["driver"] = driver
    if csi.get("readOnly") is not True:
        notes.append("warm-metal's ephemeral volumes are writable unless readOnly; this driver's are read-only")
        if "readOnly" in csi:
            csi["readOnly"] = True
        else:
            csi.insert(list(csi).index("driver") + 1, "readOnly", True)
    if secret and "nodePublishSecretRef" not in csi:
        csi.insert(list(csi).index("readOnly") + 1, "nodePublishSecretRef", CommentedMap(name=secret))
    if secret_namespace and secret_namespace != namespace:
        notes.append(
            f"secretNamespace {secret_namespace} is dropped: nodePublishSecretRef is read from the pod's namespace"
        )
    if attributes.fa.flow_style():
        renamed.fa.set_flow_style()
    csi["volumeAttributes"] = renamed
    return tuple(notes)


def _defaults_to_always(reference: object) -> bool:
    try:
        return default_pull_policy(parse_reference(str(reference))) == "Always"
    except errors.DriverError:
        return False  # the driver will name the bad reference


def _convert_data(data: object, driver: str, pod_pull_secrets: bool = False) -> list[Converted]:
    converted = []
    for owner, spec in pod_specs(data):
        meta = owner.get("metadata") or {}
        for volume in spec.get("volumes") or []:
            if not isinstance(volume, CommentedMap):
                continue
            where = (str(owner.get("kind")), str(meta.get("name", "?")), str(volume.get("name")))
            if "image" in volume:
                _csi_volume(volume, spec, driver, pod_pull_secrets)
                converted.append(Converted(*where))
            elif isinstance(volume.get("csi"), CommentedMap) and volume["csi"].get("driver") == WARM_METAL_DRIVER:
                notes = _from_warm_metal(volume["csi"], meta.get("namespace"), driver)
                converted.append(Converted(*where, source="warm-metal volume", notes=notes))
    return converted


def split_documents(text: str) -> list[str]:
    """The documents of a YAML stream, each with its own ``---`` line; they join back to ``text``."""
    bounds = [0, *(m.start() for m in _DOCUMENT_START.finditer(text) if m.start() > 0), len(text)]
    return [text[start:end] for start, end in pairwise(bounds) if end > start]


def convert_document(
    text: str, driver: str = DEFAULT_DRIVER_NAME, pod_pull_secrets: bool = False
) -> tuple[str, list[Converted]]:
    """One YAML document, converted; unchanged text when it has no image volume."""
    head = ""
    if (bare := _BARE_START.match(text)) is not None:
        head, text = text[: bare.end()], text[bare.end() :]
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold a long line that was not folded
    yaml.brace_single_entry_mapping_in_flow_sequence = True  # [{name: x}] stays so, not [name: x]
    data = yaml.load(text)
    converted = _convert_data(data, driver, pod_pull_secrets)
    if not converted:
        return head + text, []
    _, indent, offset = load_yaml_guess_indent(text)
    yaml.indent(mapping=2, sequence=indent or 2, offset=offset or 0)
    yaml.explicit_start = text.startswith("---")
    out = io.StringIO()
    yaml.dump(data, out)
    return head + out.getvalue(), converted


def convert(
    text: str, driver: str = DEFAULT_DRIVER_NAME, pod_pull_secrets: bool = False
) -> tuple[str, list[Converted]]:
    """A multi-document YAML stream with every image (and warm-metal) volume rewritten as a ``csi`` volume."""
    parts, converted = [], []
    for document in split_documents(text):
        new, done = convert_document(document, driver, pod_pull_secrets)
        parts.append(new)
        converted += done
    return "".join(parts), converted


def run(path: str, check: bool, driver: str = DEFAULT_DRIVER_NAME, pod_pull_secrets: bool = False) -> int:
    """The subcommand: the converted YAML on stdout, or with ``check`` only what would change.

    Exit 0 when done (or, with ``check``, nothing to change), 1 when ``check`` found image
    volumes, 2 when the input cannot be read as YAML.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        new, converted = convert(text, driver, pod_pull_secrets)
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        print(f"oci-volume-csi convert: {path}: {exc}", file=sys.stderr)
        return 2
    for item in converted:
        done = "would become" if check else "is now"
        print(f"{path}: {item}: {item.source} {done} a csi volume of {driver}", file=sys.stderr)
        for note in item.notes:
            print(f"{path}: {item}: {note}", file=sys.stderr)
    if check:
        return 1 if converted else 0
    sys.stdout.write(new)
    return 0
