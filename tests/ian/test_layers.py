"""The folders of ``src/ian`` import one way: a layer never imports a layer above it.

Order, bottom to top: evaluators, chain, consensus, storage, p2p, ledger, tau, maintenance, api,
node.
The only upward edge is ``api`` naming ``ian.node.Node`` for type checking (``TYPE_CHECKING``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import ian

ORDER = [
    "evaluators",
    "chain",
    "consensus",
    "storage",
    "p2p",
    "ledger",
    "tau",
    "maintenance",
    "api",
    "node",
]
ROOT = Path(ian.__file__).parent


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def _runtime_imports(tree: ast.Module) -> list[str]:
    """Modules imported outside ``if TYPE_CHECKING:`` blocks."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append(child.module)
            elif isinstance(child, ast.Import):
                out.extend(alias.name for alias in child.names)
            visit(child)

    visit(tree)
    return out


def test_layers_import_downwards_only() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        me = _layer(".".join(rel.parts))
        if me is None:
            continue
        for module in _runtime_imports(ast.parse(path.read_text())):
            other = _layer(module)
            if other is not None and ORDER.index(other) > ORDER.index(me):
                upward.append(f"{rel}: imports {module}")
    assert upward == []


def test_event_bus_does_not_import_the_services_that_publish() -> None:
    tree = ast.parse((ROOT / "events.py").read_text())
    assert [m for m in _runtime_imports(tree) if m.startswith("ian.")] == []
