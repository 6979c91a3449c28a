"""The layout's rules, checked: which package may import which, and the modules that must
start without torch (and, for the database layer, without Celery)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmq"

# what each part of llmq may import of llmq (anywhere in a module, lazily or not)
ALLOWED = {
    "settings": set(),
    "contract": {"settings"},
    "db": {"settings", "contract", "db"},
    "engine": {"contract", "engine"},
    "variants": {"settings", "contract", "db", "engine", "variants"},
    "worker": {"settings", "contract", "db", "engine", "variants", "worker"},
    "api": {"settings", "contract", "db", "api", "variants", "worker"},
    "migrations": {"settings", "db"},
}
# the command modules and the HTTP routes parse, call the service and answer: no queries, no
# tasks, no engine
CLI_ALLOWED = {"settings", "contract", "api", "db.migrate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def llmq_imports(path: Path) -> set[str]:
    """Every ``llmq.*`` module a file imports, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
        ".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llmq")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("llmq"):
                found.add(base)
    return {m.removeprefix("llmq.") for m in found if m != "llmq"}


def part_of(module: str) -> str:
    return module.split(".")[0]


def test_each_part_imports_only_what_the_layout_allows() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path).removeprefix("llmq.")
        if name in ("llmq", "__main__", "data"):
            continue
        allowed = ALLOWED[part_of(name)]
        for imported in llmq_imports(path):
            ok = part_of(imported) in allowed
            if name.startswith(("api.cli", "api.http")):
                ok = part_of(imported) in CLI_ALLOWED or imported in CLI_ALLOWED
            if not ok:
                wrong.append(f"{name} imports llmq.{imported}")
    assert wrong == []


def _modules(*parts: str) -> list[str]:
    out = []
    for part in parts:
        target = PACKAGE / part
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        out += [module_name(f) for f in files]
    return out


CHECK = """
import importlib, json, sys
first = {}
for name in sys.argv[1:]:
    importlib.import_module(name)
    for heavy in ("torch", "celery"):
        if heavy in sys.modules and heavy not in first:
            first[heavy] = name
print(json.dumps(first))
"""


def first_to_load(modules: list[str]) -> dict[str, str]:
    """For torch and Celery: the first of ``modules`` whose import loaded it, in a fresh
    interpreter."""
    out = subprocess.run([sys.executable, "-c", CHECK, *modules], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize(("parts", "forbidden"), [
    (("api", "db", "settings", "contract"), "torch"),
    (("db", "settings", "contract"), "celery"),
])
def test_front_door_and_database_start_without_heavy_imports(parts: tuple[str, ...],
                                                             forbidden: str) -> None:
    modules = _modules(*parts)
    assert "llmq.api.service" in modules or "api" not in parts
    assert first_to_load(modules).get(forbidden) is None


def test_the_check_sees_torch_when_it_is_loaded() -> None:
    assert first_to_load(["llmq.contract", "llmq.engine.model"]) == {"torch": "llmq.engine.model"}
