"""The package order of ``backend/`` (docs/backend.md, "Package order") and no import circle anywhere in
``backend/`` or ``mtal_models/``.

Imports are read with :mod:`ast`, never executed. Every import counts, wherever it stands: at module
level, inside a function (a lazy import still ties the two modules together; laziness only hides a
circle) and under ``if TYPE_CHECKING:``. ``from pkg import name`` counts as an import of ``pkg.name``
when that is a module, else of ``pkg``. Importing ``a.b.c`` does not count as importing the package
``a.b`` (every ``__init__.py`` of ``backend`` holds only its docstring).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# group -> groups it may import (besides itself); a group is the part of the name after ``backend.``:
# a subpackage or a top-level module. Anything not listed may import nothing of backend and be imported
# by nothing (the package's __init__, named "").
BASE = {"settings", "logs"}  # logs imports nothing of backend; settings only logs
ALLOWED: dict[str, set[str]] = {
    "": set(),
    "settings": {"logs", "env"},
    "logs": set(),
    "env": set(),  # the environment readers of settings
    "labelstudio": BASE,
    "serving": BASE | {"labelstudio"},
    "loop": BASE | {"labelstudio", "serving"},
    "web": BASE | {"labelstudio", "serving", "loop"},
    "cli": BASE | {"labelstudio"},
    "jobs": {"loop"},  # RQ job paths of jobs enqueued before the regrouping; nothing imports it
}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` under ``root`` (a package is named by its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports, anywhere in the file."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import a.b.c`` of a name that is not a module: its package
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    files: dict[str, Path] = {}
    for package in packages:
        files.update(module_names(root, package))
    return {name: imports_of(name, path, files) for name, path in files.items()}


def group_of(module: str, package: str) -> str | None:
    """``backend.loop.jobs`` -> "loop"; ``backend`` -> ""; a module of another package -> None."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: Mapping[str, set[str]], package: str, allowed: Mapping[str, set[str]]) -> list[str]:
    """Every import of ``package`` that crosses into a group its own group may not import."""
    bad = []
    for module, targets in sorted(graph.items()):
        src = group_of(module, package)
        if src is None:
            continue
        for target in sorted(targets):
            dst = group_of(target, package)
            if dst is None or dst == src:
                continue
            if src not in allowed or dst not in allowed or dst not in allowed[src]:
                bad.append(f"{module} imports {target} ({src or package!r} may import {sorted(allowed.get(src, ()))})")
    return bad


def circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Each import circle (a strongly connected component of more than one module), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graphs are small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_backend_imports_point_only_down() -> None:
    graph = import_graph(REPO, ["backend"])
    assert "backend.loop.jobs" in graph["backend.jobs"]  # the reader sees the tree it checks
    groups = {group_of(m, "backend") for m in graph}
    assert groups <= set(ALLOWED), f"modules outside the package order: {groups - set(ALLOWED)}; add them to ALLOWED"
    assert upward_imports(graph, "backend", ALLOWED) == []


def test_no_import_circle_in_backend_or_mtal_models() -> None:
    assert circles(import_graph(REPO, ["backend", "mtal_models"])) == []


# ---- the checks themselves, on a tiny package planted in tmp_path ----------------------------------------
def _plant(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    _plant(tmp_path, {
        "backend/__init__.py": '"""fake"""\n',
        "backend/settings.py": "import os\n",
        "backend/labelstudio/__init__.py": "",
        "backend/labelstudio/convert.py": "from backend.settings import os\n",
        "backend/serving/__init__.py": "",
        "backend/serving/model.py": "from backend.labelstudio import convert\nfrom . import store\n",
        "backend/serving/store.py": "",
        "backend/web/__init__.py": "",
        "backend/web/app.py": "from backend.serving.model import x\n",
    })
    return tmp_path


def test_a_clean_fake_package_passes(fake: Path) -> None:
    graph = import_graph(fake, ["backend"])
    assert graph["backend.serving.model"] == {"backend.labelstudio.convert", "backend.serving.store"}
    assert upward_imports(graph, "backend", ALLOWED) == []
    assert circles(graph) == []


@pytest.mark.parametrize("line", [
    "from backend.web.app import create_app\n",  # module level
    "def f():\n    from backend.serving import model\n",  # inside a function
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import backend.web.app\n",
    "from ..serving.model import x\n",  # relative
])
def test_a_planted_upward_import_is_caught(fake: Path, line: str) -> None:
    _plant(fake, {"backend/labelstudio/convert.py": line})
    bad = upward_imports(import_graph(fake, ["backend"]), "backend", ALLOWED)
    assert len(bad) == 1 and bad[0].startswith("backend.labelstudio.convert imports backend.")


def test_a_module_outside_the_order_is_caught(fake: Path) -> None:
    _plant(fake, {"backend/helpers.py": "from backend.web import app\n"})
    bad = upward_imports(import_graph(fake, ["backend"]), "backend", ALLOWED)
    assert bad == ["backend.helpers imports backend.web.app ('helpers' may import [])"]


def test_a_planted_circle_is_caught(fake: Path) -> None:
    _plant(fake, {"backend/serving/store.py": "def load():\n    from backend.serving.model import MTALModel\n"})
    assert circles(import_graph(fake, ["backend"])) == [["backend.serving.model", "backend.serving.store"]]
