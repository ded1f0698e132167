"""The operators' dependency graph: topological order (Kahn) and the report of a cycle."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from server_mock._definition._errors import PipelineDefinitionError

if TYPE_CHECKING:
    from server_mock._definition._model import OperatorSpec

__all__ = ["cycle_error", "kahn"]


def kahn(operators: Sequence[OperatorSpec]) -> list[int]:
    """Return the topological order as operator indices (short of all of them on a cycle)."""
    index_of = {spec.name: i for i, spec in enumerate(operators)}
    indegree = [0] * len(operators)
    children: list[list[int]] = [[] for _ in operators]
    for i, spec in enumerate(operators):
        for parent in spec.upstream:
            j = index_of.get(parent)
            if j is not None and j != i:
                indegree[i] += 1
                children[j].append(i)
            elif j == i:
                indegree[i] += 1  # self-loop: never ready
    ready = [i for i, degree in enumerate(indegree) if degree == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in children[i]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, child)
    return order


def cycle_error(operators: Sequence[OperatorSpec], order: list[int]) -> PipelineDefinitionError:
    """Build the error for a dependency cycle among the operators Kahn could not order."""
    done = set(order)
    index_of = {spec.name: i for i, spec in enumerate(operators)}
    remaining = {i for i in range(len(operators)) if i not in done}

    def parents(i: int) -> list[int]:
        found = {index_of[p] for p in operators[i].upstream if p in index_of}
        return sorted(found & remaining)

    # Every remaining operator has a remaining parent: walk parents until one repeats.
    walk = [min(remaining)]
    position = {walk[0]: 0}
    while True:
        nxt = parents(walk[-1])[0]
        if nxt in position:
            loop = walk[position[nxt] :]
            break
        position[nxt] = len(walk)
        walk.append(nxt)
    loop.reverse()  # now in data-flow order: each operator feeds the next one
    start = loop.index(min(loop))
    loop = loop[start:] + loop[:start]
    path = " -> ".join(operators[i].name for i in [*loop, loop[0]])
    first = operators[loop[0]]
    closing = operators[loop[-1]].name
    field = next(
        f"input[{k}].from" for k, entry in enumerate(first.inputs) if entry.from_operator == closing
    )
    return PipelineDefinitionError(f"dependency cycle: {path}", first.name, field)


# --- operator level -------------------------------------------------------------------------
