"""Which points of a 1-D grid a search evaluates: every point, or coarse to fine.

AWQ's scale search scores ``n`` ratios ``0 .. n-1`` (plus plain RTN, off the ratio axis) and each
score costs forwards of the attention or the MLP over the calibration batches. Coarse to fine
scores every ``step``-th ratio (and the last one), then around the best so far the points at
distance ``d = ceil(step / 2)``, then ``ceil(d / 2)``, ... down to 1: about ``n / step + 2 log2(step)``
scores instead of ``n``. Where the error is strictly unimodal in the ratio (falls to one minimum,
then rises) it finds the grid's minimum: after a stage at distance ``d`` the minimum lies within
``d - 1`` of the best point, and the next stage's points at ``ceil(d / 2)`` keep that true for the
halved distance, down to 0. Where it is not unimodal it may stop at a local minimum: that is the
price of the setting (``QuantConfig.awq_grid_step``; 1 scores every ratio).
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

# search(keys, incumbent) -> (best key, {key: cost}); incumbent: (key, full cost) of the best so far or None
StageSearch = Callable[[Sequence[Hashable], "tuple[Hashable, float] | None"], "tuple[Hashable, dict]"]


def coarse_points(n: int, step: int) -> list[int]:
    """Every ``step``-th grid point from 0, and the last point so no minimum lies beyond the coarse grid."""
    points = list(range(0, n, step))
    if points[-1] != n - 1:
        points.append(n - 1)
    return points


def coarse_to_fine(n: int, step: int, extra: Sequence[Hashable], search: StageSearch) -> tuple[Hashable, dict]:
    """The best of ``extra`` (keys off the grid, scored in the first stage) and grid points ``0 .. n-1``
    found coarse to fine; returns it and the cost of every key scored (a key left out has no cost).

    ``step == 1`` is the plain search: one stage over ``extra`` and every grid point."""
    if n <= 0 or step <= 0:
        raise ValueError(f"a grid search needs n > 0 and step > 0, got n={n}, step={step}")
    best, costs = search([*extra, *coarse_points(n, step)], None)
    distance = step
    while distance > 1:
        distance = (distance + 1) // 2
        around = best if best not in extra else None  # an off-grid winner: refine the best grid point
        if around is None:
            scored = [k for k in costs if k not in extra]
            around = min(scored, key=lambda k: (costs[k], k))
        new = [p for p in (around - distance, around + distance) if 0 <= p < n and p not in costs]
        if new:
            best, found = search(new, (best, costs[best]))
            costs.update(found)
    return best, costs
