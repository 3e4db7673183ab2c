"""Hand this machine's pip configuration to a container build (used by build-image.sh).

Where PyPI is reached through a configured index, wheel directory or CA bundle, a build that
ignores the machine's pip configuration fails. `pip config list` shows every setting pip uses
here, from its files and from PIP_* variables alike. This writes them into one pip.conf (the
variables win, as they do for pip) and prints the local paths that configuration names, one a
line, for the build to bind read-only at the same place.

Usage: python3 scripts/pip_context.py OUT_PIP_CONF > paths
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from urllib.parse import urlparse

# Every pip setting whose value names local files pip reads: CA bundles and client certificates,
# constraints and requirements files, wheel directories and file:// indexes. One the build cannot
# open stops it ("Could not open requirements file"), so each must be bound into the build.
PATH_KEYS = (
    "cert",
    "client-cert",
    "constraint",
    "build-constraint",
    "requirement",
    "find-links",
    "index-url",
    "extra-index-url",
)
INDEX_KEYS = ("index-url", "extra-index-url")


def pip_settings() -> dict[str, dict[str, str]]:
    """{section: {key: value}} as pip would use them, environment variables folded into global."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True, text=True
    ).stdout
    sections: dict[str, dict[str, str]] = {"global": {}}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        target = from_env if section == ":env:" else sections.setdefault(section, {})
        target[key] = ast.literal_eval(value)
    sections["global"].update(from_env)
    return sections


def local_paths(sections: dict[str, dict[str, str]]) -> list[str]:
    """The files and directories the settings point at on this machine."""
    paths: list[str] = []
    for settings in sections.values():
        for key in PATH_KEYS:
            for item in settings.get(key, "").split():
                path = urlparse(item).path if item.startswith("file:") else item
                if not path.startswith("/"):
                    continue  # a remote index: the build reaches it as this machine does
                if key in INDEX_KEYS:
                    # a simple index links its files relatively (../../files/…): bind its parent
                    path = os.path.dirname(path.rstrip("/"))
                if os.path.exists(path) and path not in paths:
                    paths.append(path)
    return paths


def main(out: str) -> None:
    sections = pip_settings()
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(sections)
    with open(out, "w") as file:
        config.write(file)
    print("\n".join(local_paths(sections)))


if __name__ == "__main__":
    main(sys.argv[1])
