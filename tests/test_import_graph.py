"""The import graph points down, and nothing shipped refers to a path outside the repository.

Rules (docs/architecture.md, section 1): ``recon`` imports none of ``viewer``, ``methods``, ``data``; ``data``
imports neither ``methods`` nor ``viewer``; ``viewer`` imports neither ``methods`` nor ``data``; a
method never imports another method. Every import counts, at any depth (function-local imports
included), and so does a string literal handed to ``importlib.import_module`` or ``__import__``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recon", "methods", "data", "viewer")
FORBIDDEN = {"recon": {"viewer", "methods", "data"}, "data": {"methods", "viewer"}, "viewer": {"methods", "data"}, "methods": {"viewer"}}


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` (the code of ``module``) imports, anywhere in it.

    ``from a import b`` yields ``a.b`` (b may be a sub-module); relative imports are resolved
    against ``module``; ``importlib.import_module("x")`` and ``__import__("x")`` yield ``x``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve("." * node.level + (node.module or ""), package)
            found += [(node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base) for alias in node.names]
        elif isinstance(node, ast.Call) and _callee(node.func) in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.append((node.lineno, _resolve(arg.value, package)))
    return found


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _resolve(name: str, package: str) -> str:
    level = len(name) - len(name.lstrip("."))
    if level == 0:
        return name
    parts = package.split(".")
    base = parts[: len(parts) - level + 1]
    return ".".join(base + ([name[level:]] if name[level:] else []))


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The rule each import of ``module`` breaks, as ``line: module -> target``."""
    own = module.split(".")
    out = []
    for line, target in imported_modules(source, module, is_package):
        top = target.split(".")
        if top[0] in FORBIDDEN.get(own[0], ()):
            out.append(f"{line}: {module} -> {target}")
        elif own[0] == "methods" == top[0] and len(own) > 1 and len(top) > 1 and top[1] != own[1]:
            out.append(f"{line}: {module} -> {target} (a method imports another method)")
    return out


def package_modules() -> list[tuple[Path, str, bool]]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            modules.append((path, ".".join(parts[:-1] if is_package else parts), is_package))
    return modules


def test_the_checker_sees_hidden_imports():
    """A checker that only read top-level imports would pass anything: it must catch these."""
    hidden = {
        "def f():\n    from viewer import x\n": "recon.cli.train",
        "def f():\n    if True:\n        import data.synthetic\n": "recon.engine.trainer",
        "import importlib\nm = importlib.import_module('methods.splat')\n": "recon.config",
        "from importlib import import_module\nimport_module('viewer.server')\n": "recon.export.mesh_io",
        "class A:\n    def f(self):\n        from viewer.server import x\n": "data.parsers.common",
        "from methods import splat\n": "methods.coherentgs.model",
        "from ..splat.model import SplatModel\n": "methods.coherentgs.model",
        "from data.base import SceneBox\n": "viewer.server",
    }
    for source, module in hidden.items():
        assert violations(source, module), (module, source)
    allowed = [
        ("from recon.cameras import Cameras\n", "data.base", False),
        ("from methods.splat.model import SplatModel\nfrom .strategy import X\n", "methods.splat.model", False),
        ("from .model import SplatModel\n", "methods.splat", True),
        ("from recon.panel_api import Panel\n", "viewer.server", False),
        ("import importlib\nimportlib.import_module(name)\n", "recon.config", False),
    ]
    for source, module, is_package in allowed:
        assert not violations(source, module, is_package), (module, source)
    assert _resolve("..splat.model", "methods.coherentgs") == "methods.splat.model"


def test_imports_point_down():
    modules = package_modules()
    assert len(modules) > 50 and {m.split(".")[0] for _, m, _ in modules} == set(PACKAGES)
    broken = [v for path, module, is_package in modules for v in violations(path.read_text(), module, is_package)]
    assert not broken, "imports against the dependency rules:\n" + "\n".join(broken)


OUTSIDE = re.compile(r"\.\./shared|/work/")


@pytest.mark.parametrize("top", [*PACKAGES, "scripts", "Makefile"])
def test_nothing_refers_to_paths_outside_the_repository(top):
    """The repository works as a plain clone: only tests (through the ``shared_data`` fixture) and
    benchmarks may look beside it."""
    root = ROOT / top
    files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert files
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if OUTSIDE.search(line)]  # fmt: skip
    assert not hits, "\n".join(hits)
