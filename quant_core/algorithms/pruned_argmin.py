"""The exact argmin of costs that are sums of non-negative parts, without computing every part.

AWQ's scale search scores each candidate scale by its parent module's output error summed over
the recorded calibration batches (one forward of the attention or the MLP per candidate and
batch: 21 x 16 forwards per group and block at its defaults). A partial sum over some batches is
a lower bound of the full sum, since the parts are non-negative and adding a non-negative float
never makes a float sum smaller. So once one candidate's full cost is known, another candidate
can stop as soon as its partial sum exceeds it: it cannot win. Every candidate's first part is
computed first and ranks them, so the likely winner is completed early and the bound is tight.

The choice is the one the plain loop makes, bit for bit: the parts of each candidate are added in
the same order from 0.0 (the same float sums), a candidate stops only when its partial cost is
*strictly* larger than the best full cost, and equal full costs go to the candidate listed first
(the plain loop's tie rule). What it saves depends on the costs' spread: a candidate with twice
the best cost stops about half-way; one within a few percent of it runs nearly to the end.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence


def pruned_argmin(keys: Sequence[Hashable], n_parts: int, part_cost: Callable[[Hashable, int], float],
                  factor: Callable[[Hashable], float] = lambda _key: 1.0,
                  incumbent: tuple[Hashable, float] | None = None,
                  rank: Callable[[Hashable], int] | None = None) -> tuple[Hashable, dict]:
    """The key of least ``factor(key) * sum(part_cost(key, i) for i in range(n_parts))``, ties to the
    earliest in ``keys``, and each key's cost: the full cost, or for a key that stopped early its
    partial cost, a lower bound that already exceeds the winner's.

    ``part_cost(key, i)`` must be non-negative; ``factor(key)`` positive (called once per key).
    Calls ``part_cost`` key by key, parts in order (a caller that loads a candidate's weights for its
    parts reloads only when the key changes).

    ``incumbent``: ``(key, full cost)`` of a key chosen before (a coarse-to-fine search's earlier
    stage); it bounds these keys from the start and wins unless one of them beats it. ``rank``: the
    tie order across stages (smaller first; default: the position in ``keys``)."""
    if not keys or n_parts <= 0:
        raise ValueError("pruned_argmin needs at least one key and one part")
    order = {key: i for i, key in enumerate(keys)}
    rank = rank or order.__getitem__
    factors = {key: factor(key) for key in keys}
    partial = {key: 0.0 + part_cost(key, 0) for key in keys}  # the first part of every key ranks them
    done = dict.fromkeys(keys, 1)
    best_key, best = incumbent if incumbent is not None else (None, float("inf"))
    for key in sorted(keys, key=lambda k: (partial[k] * factors[k], order[k])):
        while done[key] < n_parts and partial[key] * factors[key] <= best:
            partial[key] += part_cost(key, done[key])
            done[key] += 1
        cost = partial[key] * factors[key]
        if done[key] == n_parts and (cost < best or (cost == best and rank(key) < rank(best_key))):
            best_key, best = key, cost
    return best_key, {key: partial[key] * factors[key] for key in keys}
