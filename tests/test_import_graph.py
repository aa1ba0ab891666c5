"""No import circle between ``rsfuse`` files (docs/INTERNALS.md, layering), read from the source without importing it.

Every ``import`` / ``from … import`` of an rsfuse module counts: at module level, under ``if TYPE_CHECKING:`` and
inside functions (a function-local import that closes a circle only hides it until the call). An edge goes to the
file imported (``from rsfuse.a import b`` → ``rsfuse/a/b.py`` when that is a module, else ``rsfuse/a/__init__.py``).
A second check follows what Python runs at import time: module-level imports, each also importing the packages
above its target (``rsfuse.a.b`` runs ``rsfuse/a/__init__.py`` first), except the importer's own packages and the
lazy top-level ``rsfuse`` package.
"""

import ast
from pathlib import Path

import rsfuse

PACKAGE = Path(rsfuse.__file__).parent

# Circles known and accepted (none since issue 28 part 3 moved generation below the model).
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _kind(parents: list[ast.AST]) -> str:
    if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for node in parents):
        return "local"
    if any(isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for node in parents):
        return "type_checking"
    return "module"


def _imports(module: str, is_package: bool, source: str, modules: dict[str, Path]) -> dict[str, set[str]]:
    """The rsfuse modules ``source`` (module ``module``) imports → the kinds of import ("module", "type_checking",
    "local")."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    package = module if is_package else module.rpartition(".")[0]
    found: dict[str, set[str]] = {}

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in child.names]
                targets = [name if name in modules else base for name in names]
            for target in targets:
                resolved = resolve(target) if target.split(".")[0] == "rsfuse" else None
                if resolved and resolved != module:
                    found.setdefault(resolved, set()).add(_kind(parents))
            visit(child, [*parents, child])

    visit(ast.parse(source), [])
    return found


def _edges(modules: dict[str, Path]) -> dict[tuple[str, str], set[str]]:
    """``(importer, imported) → kinds`` over rsfuse files."""
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in modules.items():
        for imported, kinds in _imports(module, path.name == "__init__.py", path.read_text(), modules).items():
            edges[(module, imported)] = kinds
    return edges


def _cycles(modules, graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(modules):
        if node not in index:
            connect(node)
    return found


def _describe(cycles: list[set[str]], edges) -> str:
    lines = []
    for cycle in cycles:
        lines.append("circle: " + ", ".join(sorted(cycle)))
        lines += [f"  {a} -> {b} ({'/'.join(sorted(kinds))})" for (a, b), kinds in sorted(edges.items())
                  if a in cycle and b in cycle]
    return "\n".join(lines)


def test_no_import_circle_between_rsfuse_files():
    modules = _modules()
    edges = _edges(modules)
    graph: dict[str, set[str]] = {}
    for importer, imported in edges:
        graph.setdefault(importer, set()).add(imported)
    cycles = _cycles(modules, graph)
    unknown = [cycle for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not unknown, _describe(unknown, edges)
    gone = [cycle for cycle in KNOWN_CYCLES if cycle not in cycles]
    assert not gone, f"no longer a circle, remove it from KNOWN_CYCLES: {gone}"


def test_no_import_circle_at_import_time_through_package_inits():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for (importer, imported), kinds in _edges(modules).items():
        if "module" not in kinds:
            continue
        targets = {imported}
        parts = imported.split(".")
        for end in range(2, len(parts)):  # rsfuse.a.b runs rsfuse/a/__init__.py first (rsfuse itself is lazy)
            package = ".".join(parts[:end])
            if not (importer + ".").startswith(package + "."):
                targets.add(package)
        graph.setdefault(importer, set()).update(targets)
    cycles = _cycles(modules, graph)
    assert not cycles, "\n".join("circle: " + ", ".join(sorted(cycle)) for cycle in cycles)


def test_the_graph_sees_each_kind_of_import():
    modules = _modules()
    source = """
from typing import TYPE_CHECKING
import rsfuse.options
from rsfuse.checkpoints import formats
from . import layout
if TYPE_CHECKING:
    from rsfuse.model.mfrsvlm import MFRSVLM
def load():
    from rsfuse.model.loading import load_pretrained
"""
    assert _imports("rsfuse.model.example", False, source, modules) == {
        "rsfuse.options": {"module"},
        "rsfuse.checkpoints.formats": {"module"},
        "rsfuse.model.layout": {"module"},
        "rsfuse.model.mfrsvlm": {"type_checking"},
        "rsfuse.model.loading": {"local"},
    }
    edges = _edges(modules)
    assert edges[("rsfuse.model.loading", "rsfuse.checkpoints.formats")] == {"module"}
    assert edges[("rsfuse.processor.settings", "rsfuse.checkpoints.formats")] == {"local"}
