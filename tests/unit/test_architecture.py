"""The module graph keeps the shape the README describes (the import-linter
contracts in pyproject.toml check the layers; this checks cycles and the
Twisted modules a handler must not need)."""

from __future__ import annotations

import grimp

GRAPH = grimp.build_graph(
    "chatserver", exclude_type_checking_imports=True, include_external_packages=True
)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(module: str) -> None:
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if not imported.startswith("chatserver"):
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(m for m in graph.modules if m.startswith("chatserver")):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_outside_type_checking():
    assert cycles(GRAPH) == []


def test_handlers_need_no_transport_and_no_web():
    for package in ("chatserver.handlers", "chatserver.session", "chatserver.server"):
        for module in GRAPH.find_descendants(package) | {package}:
            imported = GRAPH.find_modules_directly_imported_by(module)
            assert not {m for m in imported if m.startswith(("autobahn", "txredisapi", "txmongo"))}
    chain = GRAPH.find_shortest_chain(importer="chatserver.handlers.chat", imported="autobahn")
    assert chain is None, chain
