"""The package layout is the data flow: no import reaches back up it.

A publish runs csi (the gRPC face) → content (pull: resolve, fetch through the registry, ask layout
for the tree, commit) → views (present the tree) → mounts (bind it, record it). Each step may import
the steps it drives or consumes, as listed in ``MAY_IMPORT``, and the shared vocabulary; nothing
else. So a view never imports the registry, the store never imports the gRPC face, and layout
never imports the network. Imports are read with ``ast`` (also those inside functions and
``TYPE_CHECKING`` blocks), so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

from manifests import ROOT

PACKAGE = "csi_driver"
# Modules at the top of the package that every step shares; they import only one another.
SHARED = {"errors", "logs", "metrics", "progress", "reference", "units", "database", "__init__"}
STEPS = {"csi", "registry", "verify", "content", "layout", "views", "mounts"}
EVERYTHING = STEPS | {"_pb"}
MAY_IMPORT: dict[str, set[str]] = {
    "csi": {"_pb", "registry", "verify", "content", "layout", "views", "mounts"},
    "registry": set(),
    "verify": {"registry"},
    "content": {"registry", "verify", "layout"},
    "layout": set(),
    "views": {"content", "layout", "mounts"},
    "mounts": set(),
    # the human commands and the entry point drive everything
    "cli": EVERYTHING,
    "__main__": EVERYTHING | {"cli", "convert"},
    "convert": set(),
}


def unit_of(module: str) -> str:
    """csi_driver.views.fusefs -> views; csi_driver.errors -> errors; csi_driver -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(path: Path, module: str, root: Path) -> set[str]:
    """The csi_driver modules ``path`` imports, absolute (``from csi_driver import x`` may name a
    module or package, or just a constant of the package's own ``__init__``)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module or ""
            found.add(base)
            if base == PACKAGE:
                found |= {f"{base}.{alias.name}" for alias in node.names if _is_module(root, alias.name)}
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _is_module(root: Path, name: str) -> bool:
    return (root / PACKAGE / f"{name}.py").exists() or (root / PACKAGE / name).is_dir()


def wrong_arrows(root: Path) -> list[str]:
    wrong = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        unit = unit_of(module)
        if unit == "_pb":
            continue  # generated stubs
        allowed = MAY_IMPORT.get(unit, set())
        for target in sorted(imported(path, module, root)):
            other = unit_of(target)
            if other in (unit, "__init__") or other in SHARED or (target == PACKAGE):
                continue
            if unit in SHARED or other not in allowed:
                wrong.append(f"{module} imports {target}")
    return wrong


def test_no_import_reaches_back_up_the_data_flow() -> None:
    assert wrong_arrows(ROOT) == []


def test_every_module_belongs_to_a_step_or_the_shared_vocabulary() -> None:
    tops = {p.stem if p.is_file() else p.name for p in (ROOT / PACKAGE).iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert tops <= SHARED | set(MAY_IMPORT) | {"_pb"}, tops - (SHARED | set(MAY_IMPORT))


def test_a_view_that_imports_the_registry_is_caught(tmp_path: Path) -> None:
    views = tmp_path / PACKAGE / "views"
    views.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (views / "__init__.py").write_text("")
    (views / "bad.py").write_text("def f():\n    from ..registry.client import RegistryClient\n")
    (tmp_path / PACKAGE / "layout").mkdir()
    (tmp_path / PACKAGE / "layout" / "rules.py").write_text("from csi_driver.content import store\n")
    assert wrong_arrows(tmp_path) == [
        "csi_driver.layout.rules imports csi_driver.content",
        "csi_driver.views.bad imports csi_driver.registry.client",
    ]
