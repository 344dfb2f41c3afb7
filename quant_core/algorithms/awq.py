"""AWQ (Lin et al. 2023): activation-aware per-channel scales, then a weight-clipping search.

For each group of linears that share an input (``equalize.ScaleGroup``), scales
``s = x_mean**r / w_mean**(1 - r)`` (AutoAWQ's "duo scaling"; ``x_mean**r`` alone with
``awq_duo_scaling=False``) are tried for ``awq_n_grid`` ratios ``r`` in ``[0, 1)``, and plain
RTN (``s = 1``) is kept if nothing beats it. The objective, as in AutoAWQ, is the output
error of the group's parent module (attention for q/k/v, the MLP for gate/up) on the
``awq_parent_batches`` calibration batches (``awq_parent_batch_choice``: the first, or spread over the
text; ``awq_mlp_token_stride > 1``: the MLP instead on every n-th token of all windows,
``token_sample``); a lone linear (o_proj, down_proj) uses its
exact squared output error over all calibration tokens, ``trace(dW H dW^T)`` with
``H = sum x x^T`` (``InputStats``; blended with its diagonal by ``awq_hessian_shrinkage``, as in
the clipping search). The best scales are folded into the producer of the
input. Then each linear searches, per output row and group, how far to shrink the
quantization range (the clipping search: ratios ``1 - i / awq_clip_grid`` while
``i / awq_clip_grid < awq_clip_max_shrink``) with the exact output error restricted to the
group's columns, and is quantized with those ranges into any format of the table.

Measured quality against RTN and the other algorithms: ``benchmarks/results/quality_algorithms.md``.
"""
from __future__ import annotations

import contextlib

import torch

from ..awq_search_auto import resolve_awq_search
from ..calibration import forward_precision, statistics_rows
from ..config import QuantConfig
from ..primitives import grouped, output_error, shrunk
from .base import QuantResult
from .clip_search import search_clip
from .driver import CalibrationBlock, calibrated_algorithm
from .equalize import ScaleGroup, equalize_block, normalized_scales, scale_groups
from .grid_search import coarse_to_fine
from .input_stats import InputStats, collect_input_stats
from .pruned_argmin import pruned_argmin
from .rounding import fake_quantize, quantize_clipped
from .token_sample import acts_per_token, hidden_only, interleaved_parts, strided_tokens


@calibrated_algorithm("awq")
def awq_step(block: CalibrationBlock) -> None:
    """Record the block's input statistics (and its parents' inputs), then scale, clip and install."""
    # quantize() has decided the search's fields; a caller of this step alone gets its device's choice
    config = resolve_awq_search(block.config, next(block.module.parameters()).device)
    groups = scale_groups(block.module, block.arch, block.model_config)
    kept = search_batches(len(block.inputs.hidden), config.awq_parent_batches, config.awq_parent_batch_choice)
    with record_parent_inputs(groups, kept, config.awq_mlp_token_stride, config.calibration_skip_tokens):
        stats = collect_input_stats(block, groups)
    block.install(awq_block(groups, stats, config))


def awq_block(groups: list[ScaleGroup], stats: dict[str, InputStats], config: QuantConfig) -> dict[str, QuantResult]:
    """Scale, fold, clip and quantize every linear of one block; returns codes per linear name.

    Groups that nothing can absorb a scale into (a linear fed by GELU) keep scales of 1 and
    only get the clipping search.
    """
    equalize_block(groups, stats, lambda group, _i: search_scales(group, stats[group.names[0]], config)[0])
    results = {}
    for group in groups:
        for name, lin in zip(group.names, group.linears):
            w = lin.weight.detach().float()
            H = shrunk(stats[name].H.to(w.device), config.awq_hessian_shrinkage)
            results[name] = quantize_clipped(w, config, search_clip(w, H, config))
    return results


def _w_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean over output rows of |w| relative to its group's max: the weight side of duo scaling."""
    groups = grouped(w.abs(), group_size)
    rel = (groups / (groups.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape[0], -1)[:, :w.shape[1]]
    return rel.mean(0)


def _parent_output(group: ScaleGroup, batch: int, config: QuantConfig) -> torch.Tensor:
    args, kwargs = group.parent_inputs[batch]
    with forward_precision(config, group.linears[0].weight.device):  # the search's forwards: bf16 if asked
        out = group.parent(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _candidate_scales(key: int, x_mean: torch.Tensor, w_mean: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """The scales of ratio ``key / awq_n_grid``; ``key == awq_n_grid``: plain RTN (s = 1)."""
    if key == config.awq_n_grid:
        return torch.ones_like(x_mean)
    r = key / config.awq_n_grid
    s = x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4) if config.awq_duo_scaling else x_mean.pow(r)
    return normalized_scales(s)


def _effective_weight(w: torch.Tensor, group: ScaleGroup, s: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """What the linears compute with under scales ``s``: quantized scaled, then unscaled."""
    s_in = group.expand(s)
    return fake_quantize(w * s_in, config) / s_in


@torch.no_grad()
def search_scales(group: ScaleGroup, stats: InputStats, config: QuantConfig) -> tuple[torch.Tensor, list[float]]:
    """Best per-channel scales (``group.n_scales`` entries) and the error of every ratio tried.

    The error is the parent module's output error (attention, MLP: as AutoAWQ, so softmax
    and activations weigh the linears' errors) summed over its recorded calibration batches when
    the group has them, else the linears' exact output error over all calibration tokens. The
    parent's sum stops early for a ratio that can no longer win (``pruned_argmin``: same choice);
    such a ratio's error is then its partial sum, already larger than the winner's. With
    ``awq_grid_step > 1`` the ratios are scored coarse to fine (``grid_search``); a ratio never
    scored reports NaN.
    """
    w = group.weight()
    x_mean = group.reduce_mean(stats.abs_mean)
    w_mean = group.reduce_mean(_w_mean(w, config.group_size))
    H = shrunk(stats.H.to(w.device), config.awq_hessian_shrinkage)
    use_parent = group.parent is not None and bool(group.parent_inputs)
    originals = [lin.weight.detach().clone() for lin in group.linears]
    splits = [lin.out_features for lin in group.linears]
    skip = 0 if group.parent_tokens_sampled else config.calibration_skip_tokens  # samples start past it

    scales = lambda key: _candidate_scales(key, x_mean, w_mean, config)  # noqa: E731
    effective = lambda key: _effective_weight(w, group, scales(key), config)  # noqa: E731
    loaded, terms = [None], {}
    ref = [_parent_output(group, b, config) for b in range(len(group.parent_inputs))] if use_parent else []

    def linear_terms(key: int) -> tuple[float, float]:  # once per ratio: a lone linear's cost and factor share it
        if key not in terms:
            dw = w - effective(key)
            terms[key] = output_error(dw, H).item(), dw.pow(2).sum().item()
        return terms[key]

    def part_cost(key: int, batch: int) -> float:
        if not use_parent:
            return linear_terms(key)[0]
        if loaded[0] != key:
            for lin, part in zip(group.linears, effective(key).split(splits)):
                lin.weight.copy_(part.to(lin.weight.dtype))
            loaded[0] = key
        out = _parent_output(group, batch, config)
        return statistics_rows(out.float() - ref[batch].float(), skip).pow(2).sum().item()

    def factor(key: int) -> float:  # awq_scale_ridge 0: factor 1, skip its weight-sized difference
        if config.awq_scale_ridge == 0:
            return 1.0
        return ridge_factor(*linear_terms(key), H, config.awq_scale_ridge)

    rank = lambda key: -1 if key == config.awq_n_grid else key  # noqa: E731  ties: RTN, then the lower ratio
    stage = lambda keys, incumbent: pruned_argmin(  # noqa: E731
        keys, len(ref) if use_parent else 1, part_cost, factor, incumbent, rank)
    try:
        best, costs = coarse_to_fine(config.awq_n_grid, config.awq_grid_step, [config.awq_n_grid], stage)
    finally:
        for lin, original in zip(group.linears, originals):
            lin.weight.copy_(original)
    return scales(best), [costs.get(i, float("nan")) for i in range(config.awq_n_grid)]


def unseen_input_factor(dw: torch.Tensor, H: torch.Tensor, ridge: float) -> float:
    """How much larger the linears' output error gets when ``H`` gains an isotropic part
    ``ridge * trace(H) / K * I``: ``1 + ridge * trace(H) / K * |dW|^2 / trace(dW H dW^T)``.

    Scales fitted to the calibration text's channel magnitudes trade error on channels it rarely
    excites for error on the ones it does; other text excites other channels. The isotropic part
    stands for inputs the calibration text never showed (``awq_scale_ridge``; 0: the factor is 1).
    The factor multiplies the parent module's error too, the linear error's share standing in for it.
    """
    if ridge == 0:
        return 1.0
    return ridge_factor(output_error(dw, H).item(), dw.pow(2).sum().item(), H, ridge)


def ridge_factor(seen: float, dw_squared: float, H: torch.Tensor, ridge: float) -> float:
    """``unseen_input_factor`` from ``seen = trace(dW H dW^T)`` and ``dw_squared = |dW|^2``."""
    unseen = ridge * H.trace().item() / H.shape[0] * dw_squared
    return 1.0 + unseen / max(seen, torch.finfo(torch.float32).tiny)


def search_batches(n_batches: int, max_batches: int, choice: str = "first") -> set[int]:
    """Which calibration batches the scale search compares: all when ``max_batches >= n_batches``, else
    the first ``max_batches``, or (``"spread"``) one from the middle of each of ``max_batches`` equal
    stretches. The windows come in text order (``calibration.sample_windows`` sorts them), so the first
    batches see only the start of the text (of the shipped text, only its Wikipedia half)."""
    if max_batches >= n_batches:
        return set(range(n_batches))
    if choice == "first":
        return set(range(max_batches))
    return {int((i + 0.5) * n_batches / max_batches) for i in range(max_batches)}


@contextlib.contextmanager
def record_parent_inputs(groups: list[ScaleGroup], batches: int | set[int], token_stride: int = 1, skip: int = 0):
    """Keep the (args, kwargs) of each group's parent module for its calls numbered in ``batches``
    (the calibration batches, in order; an int: the first that many).

    ``token_stride > 1``: a parent that acts on each token alone (``token_sample``: the MLP) instead
    keeps every ``token_stride``-th token of every call's windows past their first ``skip``."""
    keep = set(range(batches)) if isinstance(batches, int) else set(batches)
    handles, samples = [], {}
    for group in groups:
        group.parent_inputs, group.parent_tokens_sampled = [], False
        if group.parent is None or not keep:
            continue

        def hook(_module, args, kwargs, _group=group, _calls=[0], _windows=[0]):  # noqa: B006  per group
            x = hidden_only(args, kwargs) if token_stride > 1 else None
            if x is not None:
                samples.setdefault(id(_group), (_group, x[:1].detach().clone(), []))[2].append(
                    strided_tokens(x.detach(), token_stride, skip, _windows[0]))
                _windows[0] += x.shape[0]
            if _calls[0] in keep:
                _group.parent_inputs.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                             dict(kwargs)))
            _calls[0] += 1
        handles.append(group.parent.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    for group, probe, tokens in samples.values():
        if acts_per_token(group.parent, probe):
            group.parent_inputs = [((part,), {}) for part in interleaved_parts(torch.cat(tokens))]
            group.parent_tokens_sampled = True
