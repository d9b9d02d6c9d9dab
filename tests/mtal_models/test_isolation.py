"""mtal_models never imports the backend or the web/queue stack (backend, label_studio_sdk, flask, rq, redis)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mtal_models

FORBIDDEN = ("backend", "label_studio_sdk", "flask", "rq", "redis")
PACKAGE_DIR = Path(mtal_models.__file__).parent
ROOT = PACKAGE_DIR.parent


def _modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":  # a CLI entry point runs on import; the source scan below covers it
            continue
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def test_importing_every_module_loads_no_forbidden_package() -> None:
    modules = _modules()
    assert "mtal_models.training.loop" in modules and "mtal_models.metrics" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_sources_do_not_import_forbidden_packages() -> None:
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
