"""Service dependencies (`requires`): validation, start order and stop order.

Pure: names in, orders out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_problems(requires: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """`(service, problem)` for unknown requirements and for each dependency cycle."""
    problems = [
        (name, f'unknown service "{dep}"') for name, deps in requires.items() for dep in deps if dep not in requires
    ]
    problems += [(name, "requires itself") for name, deps in requires.items() if name in deps]
    cycle = find_cycle({n: [d for d in deps if d in requires and d != n] for n, deps in requires.items()})
    if cycle:
        problems.append((cycle[0], "dependency cycle " + " -> ".join(cycle)))
    return problems


def find_cycle(requires: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts (`a -> b -> a`), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(requires, WHITE)
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        color[name] = GREY
        stack.append(name)
        for dep in requires.get(name, ()):
            if color.get(dep) == GREY:
                return [*stack[stack.index(dep) :], dep]
            if color.get(dep) == WHITE:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        color[name] = BLACK
        return None

    for name in requires:
        if color[name] == WHITE:
            found = visit(name)
            if found:
                return found
    return None


def stop_layers(requires: Mapping[str, Sequence[str]], names: Sequence[str]) -> list[list[str]]:
    """`names` in layers to stop one after the other: dependents before what they require."""
    remaining = set(names)
    layers: list[list[str]] = []
    while remaining:
        # A service can stop once nothing still running requires it.
        layer = [n for n in names if n in remaining and not any(n in requires.get(o, ()) for o in remaining if o != n)]
        if not layer:  # a cycle cannot pass validation; stop the rest together rather than hang
            layer = [n for n in names if n in remaining]
        layers.append(layer)
        remaining -= set(layer)
    return layers
