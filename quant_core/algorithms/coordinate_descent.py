"""Cyclic coordinate descent on one layer's reconstruction loss (QuantEase, Behdin et al. 2023).

The loss of a quantized weight ``Q`` against the float ``W`` is ``f(Q) = tr(E H E^T)`` with
``E = W - Q`` and ``H = X X^T`` over the calibration inputs (any positive multiple of it gives
the same minimisers). Rows are independent given ``H``; for one column ``j`` with every other
column fixed, ``f`` is a parabola in ``Q[:, j]`` with curvature ``H[j, j]`` whose minimum is

    u_j = Q[:, j] + G[:, j],   G = E @ Hn,   Hn[k, j] = H[k, j] / H[j, j]

so the best value on the grid is simply the grid point nearest ``u_j`` (per row, with that
row's scale): the closed-form update, no inverse or factorisation of ``H``. After the change
``d`` of column ``j``, ``G -= d ⊗ Hn[j, :]``.

Blocked updates (the paper's accelerated form): a block of columns is updated one column at a
time with rank-1 updates of the block's own part of ``G`` only, and the rest of ``G`` catches up
with one matrix product per block, so a sweep costs about one ``[N, K] @ [K, K]`` product.
A block never crosses a group, so within it each row has one scale and zero point: the block
works in *code units* (``Q / s + z``), where projecting onto the grid is a round and a clamp.

Entries marked *free* (outliers kept in full precision) take the unconstrained optimum ``u``
instead of a grid point; ``CoordinateDescent.free_residual`` returns what they add to the
quantized weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats import WeightFormat
from ..primitives import stored_scale


@dataclass(frozen=True)
class ColumnBlock:
    start: int
    end: int
    group: int  # index into the scales' second axis


def column_blocks(group_bounds: list[tuple[int, int]], block_size: int) -> list[ColumnBlock]:
    """Blocks of at most ``block_size`` columns, none crossing a group boundary."""
    return [ColumnBlock(a, min(a + block_size, end), g)
            for g, (start, end) in enumerate(group_bounds) for a in range(start, end, block_size)]


class Grid:
    """Projection onto a format's levels in code units (``Q / s + z`` for int, ``Q / s`` for codebooks)."""

    def __init__(self, fmt: WeightFormat, device):
        self.fmt = fmt
        if fmt.is_codebook:
            self.levels = fmt.codebook(device=device).sort().values
            self.mids = (self.levels[1:] + self.levels[:-1]) / 2

    def project(self, u: torch.Tensor) -> torch.Tensor:
        if self.fmt.is_codebook:
            return self.levels[torch.bucketize(u, self.mids)]
        return u.round().clamp_(0, self.fmt.max_code)

    def offset(self, zeros: torch.Tensor | None, group: int, n: int, device) -> torch.Tensor:
        """The code of 0.0 per row for ``group``: zero points, the fixed symmetric one, or 0 (codebooks)."""
        if zeros is not None:
            return zeros[:, group].float()
        value = 0.0 if self.fmt.is_codebook else float(self.fmt.sym_zero)
        return torch.full((n,), value, device=device)


class CoordinateDescent:
    """Coordinate descent state of one ``[N, K]`` weight in working column order (see module docstring).

    ``w``: float target; ``h``: ``[K, K]`` input Hessian with a positive diagonal (dead inputs
    already given ``H[j, j] = 1``); ``scales``/``zeros``: ``[N, G]`` qparams; ``q``: the start
    (``w`` itself, or an earlier solution such as GPTQ's); ``free``: bool ``[N, K]`` of entries
    kept in full precision, or None.
    """

    def __init__(self, w, h, fmt, group_bounds, scales, zeros, q, block_size: int, free=None,
                 scale_dtype: torch.dtype = torch.float16, on_grid: bool = False):
        self.w, self.h = w, h
        self.scale_dtype = scale_dtype
        self.on_grid = on_grid  # q holds grid points (codes x scales): scales can be re-fitted
        self.diag = torch.diagonal(h).clone()
        self.hn = h / self.diag  # column j divided by H[j, j]
        self.grid = Grid(fmt, w.device)
        self.group_bounds = group_bounds
        self.blocks = column_blocks(group_bounds, block_size)
        self.scales, self.zeros = scales, zeros
        self.q = q.clone()
        self.free = free
        self.g = (w - self.q) @ self.hn
        self._best = None  # (per-row loss, q, scales) of remember_best

    def row_errors(self) -> torch.Tensor:
        """``f`` of each row: ``e_r^T H e_r`` (from ``G``, no extra product)."""
        return ((self.w - self.q) * self.g * self.diag).sum(1)

    def sweep(self, quantize: bool = True, rescale: bool = True) -> None:
        """One pass over every column; ``quantize=False`` moves columns to their unconstrained
        optimum. With ``rescale`` (and codes on the grid), each group's scales first take their
        optimum for the current codes."""
        first_blocks = {block.group: block for block in reversed(self.blocks)}
        for block in self.blocks:
            if quantize and rescale and self.on_grid and first_blocks[block.group] is block:
                self._rescale_group(block.group)
            self._sweep_block(block, quantize)
        self.on_grid = quantize

    def _rescale_group(self, group: int) -> None:
        """Per row, the exact minimiser of the loss over this group's scale with every code fixed
        (a coordinate step on the scale: ``f`` is a parabola in it), rounded to the stored dtype."""
        a, b = self.group_bounds[group]
        s_old = self.scales[:, group].float()
        units = self.q[:, a:b] / s_old[:, None]
        if self.free is not None:
            units = torch.where(self.free[:, a:b], 0.0, units)  # free entries are not scaled
        slope = (units * self.g[:, a:b] * self.diag[a:b]).sum(1)  # a^T H e
        curvature = ((units @ self.h[a:b, a:b]) * units).sum(1)  # a^T H a
        step = torch.where(curvature > 0, slope / curvature.clamp_min(1e-30), 0.0)
        s_new = stored_scale(s_old + step, self.scale_dtype)
        dq = units * (s_new - s_old)[:, None]
        self.q[:, a:b] += dq
        self.g.addmm_(dq, self.hn[a:b], alpha=-1)
        self.scales[:, group] = s_new

    def _sweep_block(self, block: ColumnBlock, quantize: bool) -> None:
        a, b = block.start, block.end
        n = self.w.shape[0]
        s = self.scales[:, block.group].float()
        z = self.grid.offset(self.zeros, block.group, n, self.w.device)
        # transposed [B, N] so that each column is one contiguous row
        vt = (self.q[:, a:b] / s[:, None] + z[:, None]).T.contiguous()
        gt = (self.g[:, a:b] / s[:, None]).T.contiguous()
        v0 = vt.clone()
        hn = self.hn[a:b, a:b]
        free = None if self.free is None else self.free[:, a:b].T.contiguous()
        for i in range(b - a):
            u = vt[i] + gt[i]
            q = self.grid.project(u) if quantize else u
            if free is not None:
                q = torch.where(free[i], u, q)
            d = q - vt[i]
            vt[i] = q
            if i + 1 < b - a:
                gt[i + 1:].addr_(hn[i, i + 1:], d, alpha=-1)
        self.g.addmm_((vt - v0).T * s[:, None], self.hn[a:b], alpha=-1)
        self.q[:, a:b] = (vt.T - z[:, None]) * s[:, None]

    def scale_columns(self) -> torch.Tensor:
        """``[N, K]``: each column's scale."""
        return torch.cat([self.scales[:, g:g + 1].float().expand(-1, end - start)
                          for g, (start, end) in enumerate(self.group_bounds)], 1)

    def refit_scales(self, scale_dtype: torch.dtype) -> int:
        """Least-squares scales for the current codes (rows solved jointly over their groups),
        kept for each row whose loss they lower. Returns how many rows took new scales."""
        s_cols = self.scale_columns()
        free = self.free if self.free is not None else torch.zeros_like(self.q, dtype=torch.bool)
        fixed = torch.where(free, self.q, 0.0)  # free entries are not scaled
        units = torch.where(free, 0.0, self.q / s_cols)  # codes - zero point, or codebook levels
        onehot = self._group_onehot()
        ph = (self.w - fixed) @ self.h
        rhs = (units * ph) @ onehot  # [N, G]
        gram = torch.stack([((units[:, a:b] @ self.h[a:b]) * units) @ onehot
                            for a, b in self.group_bounds], 1)  # [N, G, G]
        ridge = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
        gram = gram + ridge[:, None, None] * torch.eye(len(self.group_bounds), device=gram.device)
        new = torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)
        usable = torch.isfinite(new) & (new.abs() > 0) & (gram.diagonal(dim1=1, dim2=2) > ridge[:, None])
        new = stored_scale(torch.where(usable, new, self.scales.float()), scale_dtype)
        q_new = units * torch.cat([new[:, g:g + 1].expand(-1, b - a)
                                   for g, (a, b) in enumerate(self.group_bounds)], 1) + fixed
        g_new = (self.w - q_new) @ self.hn
        err_new = ((self.w - q_new) * g_new * self.diag).sum(1)
        better = err_new < self.row_errors()
        self.scales = torch.where(better[:, None], new.to(self.scales.dtype), self.scales)
        self.q = torch.where(better[:, None], q_new, self.q)
        self.g = torch.where(better[:, None], g_new, self.g)
        return int(better.sum())

    def _group_onehot(self) -> torch.Tensor:
        k = self.w.shape[1]
        onehot = torch.zeros(k, len(self.group_bounds), device=self.w.device)
        for g, (a, b) in enumerate(self.group_bounds):
            onehot[a:b, g] = 1
        return onehot

    def remember_best(self) -> None:
        """Keep, per row, the lowest-loss state seen at a call of this (on the grid)."""
        err = self.row_errors()
        if self._best is None:
            self._best = (err, self.q.clone(), self.scales.clone())
            return
        best_err, best_q, best_scales = self._best
        better = err < best_err
        self._best = (torch.where(better, err, best_err), torch.where(better[:, None], self.q, best_q),
                      torch.where(better[:, None], self.scales, best_scales))

    def restore_best(self) -> None:
        """Go back to ``remember_best``'s rows (``G`` is then stale: for the result only)."""
        _, self.q, self.scales = self._best
