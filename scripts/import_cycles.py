"""Print every import circle among StreamGuard's modules; exit 1 if there is one.

    python scripts/import_cycles.py        # `make lint` runs it

An import circle is one Python can run into: imports at module level and inside functions
count (grimp, the graph library behind import-linter, reads both); imports under
``TYPE_CHECKING`` are read only by the type checker and are left out here. Between floors the
import-linter layers contract counts those too, so no floor refers to one above it even for
a type; this check covers the modules of one floor as well.
"""

from __future__ import annotations

import sys

import grimp


def import_circles(package: str) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return circles


def main() -> int:
    circles = import_circles("streamguard")
    for circle in circles:
        print(f"import circle of {len(circle)} modules: {', '.join(circle)}")
    if not circles:
        print("no import circle among streamguard's modules")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
