"""The layout's rules, checked: which package may import which, and the modules that must
start without torch (and, for the database layer, without Celery)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Tiny

PACKAGE = Path(__file__).resolve().parents[1] / "llmq"

# what each part of llmq may import of llmq (anywhere in a module, lazily or not)
ALLOWED = {
    "settings": set(),
    "failpoints": set(),
    "contract": {"settings"},
    "db": {"settings", "contract", "db"},
    "engine": {"contract", "engine"},
    "variants": {"settings", "contract", "db", "engine", "variants"},
    "worker": {"settings", "contract", "db", "engine", "variants", "worker", "failpoints"},
    "api": {"settings", "contract", "db", "api", "variants", "worker"},
    "migrations": {"settings", "db"},
}
# the command modules and the HTTP routes parse, call the service and answer: no queries, no
# tasks, no engine
CLI_ALLOWED = {"settings", "contract", "api", "db.migrate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def llmq_imports(path: Path) -> set[str]:
    """Every ``llmq.*`` module a file imports, anywhere in it (lazily too), relative imports
    resolved; ``from package import module`` counts as importing that module."""
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
            if not base.startswith("llmq"):
                continue
            submodules = {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")}
            found |= submodules or {base}
    return {m.removeprefix("llmq.") for m in found if m != "llmq"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(path).removeprefix("llmq."): llmq_imports(path)
            for path in sorted(PACKAGE.rglob("*.py"))}


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


# the engine's rooms (llmq/engine/*/ and the runtime at its root): which may import which
ENGINE_ROOMS = {
    "engine": {"engine", "engine.model", "engine.kernels", "engine.host"},
    "engine.model": {"engine.config", "engine.model", "engine.kernels", "engine.host"},
    "engine.kernels": {"engine.config", "engine.kernels", "engine.host"},
    # host.process is the one set-up call: it switches the native kernels on or off and pins
    # the int8 GEMM
    "engine.host": {"engine.host", "engine.kernels.native", "engine.kernels.int8"},
    "engine.compress": {"engine", "engine.model", "engine.kernels", "engine.host",
                        "engine.compress"},
}


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and f"engine.{parts[1]}" in ENGINE_ROOMS:
        return f"engine.{parts[1]}"
    return "engine"


def test_each_room_of_the_engine_imports_only_what_the_layout_allows() -> None:
    wrong = []
    for name, imports in import_graph().items():
        if part_of(name) != "engine" or name == "engine":
            continue
        allowed = ENGINE_ROOMS[room_of(name)]
        for imported in imports:
            if part_of(imported) == "contract":
                continue
            if not any(imported == a or room_of(imported) == a for a in allowed):
                wrong.append(f"{name} imports llmq.{imported}")
    assert wrong == []


def test_the_offline_tools_are_imported_only_by_the_offline_commands() -> None:
    """compress/ builds variants: a serving worker never loads it (the subprocess test
    below checks one that really loads a model)."""
    offline = ("engine.compress", "variants.optimize", "variants.evaluate", "variants.recovery",
               "api.variants")
    users = sorted(name for name, imports in import_graph().items()
                   if any(i.startswith("engine.compress") for i in imports)
                   and not name.startswith(offline))
    assert users == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports
    itself (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_check_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others() -> None:
    """Lazy imports included: one that only hides a circle is still a circle."""
    graph = {name: {i for i in imports if not is_package(i)}
             for name, imports in import_graph().items()}
    assert cycles(graph) == []


def is_package(name: str) -> bool:
    return (PACKAGE.parent / ("llmq/" + name.replace(".", "/")) / "__init__.py").is_file()


SERVING = """
import sys
from llmq.settings import get_settings
from llmq.worker import runtime, tasks, serve  # noqa: F401
engine, _ = runtime.load_engine(get_settings(), sys.argv[1], "cpu", slots=2)
engine.close()
print(sorted(m for m in sys.modules if m.startswith("llmq.engine.compress")))
"""


def test_a_worker_that_serves_a_model_loads_no_offline_tool(tiny: Tiny, tmp_path: Path
                                                            ) -> None:
    env = {**os.environ, "LLMQ_COMPILE": "0", "LLMQ_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    out = subprocess.run([sys.executable, "-c", SERVING, str(tiny.gguf)], capture_output=True,
                         text=True, check=True, env=env).stdout
    assert out.strip().splitlines()[-1] == "[]"


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
    decoder = "llmq.engine.model.decoder"
    assert first_to_load(["llmq.contract", decoder]) == {"torch": decoder}
