"""What each command-line flag accepts: the text of a value → the value, or one line saying why not.

Every flag with a shape (a size, a duration, a host, a platform…) is checked here while the
command line is parsed, so a typo in a DaemonSet's ``args:`` stops the container at once with a
usage error (exit 2) naming the flag and the value, never a traceback and never a driver that
starts and then fails each pod. Paths are not required to exist: the node files they name may
appear later (the driver re-reads them), but a path that exists as the wrong kind is refused.
"""

from __future__ import annotations

import math
import os
import re
from argparse import ArgumentTypeError
from collections.abc import Callable

from csi_driver import errors
from csi_driver.reference import parse_reference, valid_host

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgt]?)(?:i?b)?", re.IGNORECASE)
# CSI's rule for a driver name (GetPluginInfo): 63 characters at most, alphanumerics at both ends.
_DRIVER_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")
_DNS_NAME_RE = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")


def log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ArgumentTypeError(f"{text!r} is not a log level: {', '.join(LOG_LEVELS)}")
    return text.upper()


def size(text: str) -> int:
    """Bytes, or binary units: ``1048576``, ``512KiB``, ``4MiB``, ``1.5G``, ``64GiB``."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ArgumentTypeError(f"{text!r} is not a size: a number of bytes or e.g. 512KiB, 4MiB, 64GiB")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def positive_size(text: str) -> int:
    value = size(text)
    if value <= 0:
        raise ArgumentTypeError(f"{text!r}: the size must be more than 0 bytes")
    return value


def min_free(text: str) -> float | int:
    """``10%`` (a fraction of the state dir's file system) or a size like ``5GiB``."""
    if not text.endswith("%"):
        return size(text)
    try:
        percent = float(text[:-1])
    except ValueError:
        percent = math.nan
    if not 0 <= percent < 100:
        raise ArgumentTypeError(f"{text!r} is not a percentage of the file system from 0% to 99%")
    return percent / 100


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, more than 0."""
    value = _number(text)
    if value <= 0:
        raise ArgumentTypeError(f"{text!r}: the number of seconds must be more than 0")
    return value


def seconds_or_zero(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise ArgumentTypeError(f"{text!r}: the number of seconds must not be negative")
    return value


def count(text: str) -> int:
    """A whole number, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def registry_host(text: str) -> str:
    """``HOST[:PORT]`` as a reference names its registry: the form ``--insecure-registry`` is matched in."""
    scheme, sep, rest = text.partition("://")
    if sep:
        raise ArgumentTypeError(
            f"{text!r} has a scheme; give the registry as references name it, without one: {rest.rstrip('/')!r}"
        )
    if not valid_host(text):
        raise ArgumentTypeError(f"{text!r} is not a registry HOST[:PORT], e.g. registry.local:5000")
    return text


def platform(text: str) -> str:
    """``os/arch[/variant]`` as Go names them."""
    from csi_driver.csi.spec import check_platform

    return _checked(check_platform, text)


def reference(text: str) -> str:
    """An image reference; kept as written, so the driver gets it as a pod would send it."""
    _checked(parse_reference, text)
    return text


def _checked(check: Callable[[str], object], text: str) -> str:
    try:
        check(text)
    except errors.InvalidArgument as exc:
        raise ArgumentTypeError(exc.message) from None
    return text


def endpoint(text: str) -> str:
    """``unix:///path/to/csi.sock``: CSI is spoken on a unix socket only."""
    if not text.startswith("unix://") or not text[len("unix://") :].strip("/"):
        raise ArgumentTypeError(f"{text!r} is not unix:///path/to/csi.sock")
    return text


def node_id(text: str) -> str:
    # CSI: NodeGetInfo's node_id is at most 256 bytes, and the kubelet needs one.
    if not text.strip() or len(text.encode()) > 256:
        raise ArgumentTypeError(f"{text!r} is not a node id: the node's name, 1 to 256 bytes")
    return text


def driver_name(text: str) -> str:
    if not _DRIVER_NAME_RE.fullmatch(text):
        raise ArgumentTypeError(
            f"{text!r} is not a CSI driver name: at most 63 letters, digits, '-' and '.', "
            "starting and ending with a letter or digit, e.g. oci-volume.csi.dev"
        )
    return text


def pod(text: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` of a pod: (namespace, name)."""
    namespace, slash, name = text.partition("/")
    if not slash or not all(_DNS_NAME_RE.fullmatch(part) for part in (namespace, name)):
        raise ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME, e.g. team-a/agent-7")
    return namespace, name


def address(text: str) -> str:
    """``[HOST]:PORT`` to listen on."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() for c in host):
        raise ArgumentTypeError(f"{text!r} is not [HOST]:PORT, e.g. :9810 or 127.0.0.1:9810")
    return text


def directory(text: str) -> str:
    """A directory, or a path where one may be made: not a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise ArgumentTypeError(f"{text!r} is not a directory")
    return text


def file(text: str) -> str:
    """A file, or a path where one may appear: not a directory."""
    if os.path.isdir(text):
        raise ArgumentTypeError(f"{text!r} is a directory, not a file")
    return text
