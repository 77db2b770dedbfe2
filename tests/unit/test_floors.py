"""The house's rule: every module imports only from its own floor or the floors below, there are
no import circles between modules, and only the CLI imports command modules."""

from __future__ import annotations

import ast
from pathlib import Path

from leadscore.config import PROJECT_ROOT

FLOORS: dict[str, int] = {
    "leadscore": 1,
    "crm_data": 2, "features": 2,
    "feature_repo": 3, "training": 3, "routing": 3,
    "serving": 4, "monitoring": 4,
    "pipelines": 5,
    "commands": 6,
}


def _modules() -> dict[str, Path]:
    out = {}
    for package in FLOORS:
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                found.add(name)
            elif name.split(".")[0] in FLOORS and name.rsplit(".", 1)[0] in known:
                found.add(name.rsplit(".", 1)[0])
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    upward = [
        f"{module} (floor {FLOORS[module.split('.')[0]]}) imports {target} "
        f"(floor {FLOORS[target.split('.')[0]]})"
        for module, targets in _graph().items() for target in targets
        if FLOORS[target.split(".")[0]] > FLOORS[module.split(".")[0]]
    ]
    assert not upward, "\n".join(upward)


def test_only_the_cli_imports_command_modules() -> None:
    offenders = [f"{module} imports {target}" for module, targets in _graph().items()
                 for target in targets
                 if target.startswith("commands") and not module.startswith("commands")]
    assert not offenders, "\n".join(offenders)


def test_no_import_circles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, circles


def test_the_rule_can_fail(tmp_path: Path) -> None:
    """The checker sees an upward import (so the tests above can fail)."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from commands.main import app\n    return app\n")
    assert _imports(module, set(_modules())) == {"commands.main"}
