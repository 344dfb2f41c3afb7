"""Equivalent per-channel scaling shared by AWQ and TEQ (which differ in how they choose the scales).

A group of linears that read the same input ``x`` computes ``x @ W.T``. Scaling the
weights' input columns by ``s`` and the input by ``1/s`` leaves the float output
unchanged: ``(x / s) @ (W * s).T == x @ W.T``. The ``1/s`` is *folded* into whatever
produced ``x`` when that producer is per-channel linear in its output:

* a norm (LayerNorm, RMSNorm): its ``weight`` (and ``bias``) divided by ``s``;
* a linear (``v_proj`` before ``o_proj``, ``up_proj`` before ``down_proj`` since
  ``act(gate) * up`` is linear in ``up``, OPT's ``fc1`` before ReLU, which is
  positively homogeneous): its output rows (and bias) divided by ``s``, possibly
  only a slice of its rows for fused projections (Phi-3's ``qkv_proj``/``gate_up_proj``).

Grouped-query attention repeats each value channel over several heads, so
``o_proj``'s input channel ``c`` comes from value channel ``channel_map[c]``; the
scales are then chosen per value channel and repeated, which keeps the fold exact.
When nothing can absorb ``1/s`` (a GELU before the linear), the linear keeps it as
an input scale (``ScaleGroup.foldable`` is false).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class ScaleGroup:
    """Linears reading one input, and the module that produces that input."""
    names: list[str]
    linears: list[nn.Linear]
    prev: nn.Module | None = None  # norm or nn.Linear whose output is the input; None: not foldable
    prev_rows: slice | None = None  # rows of a fused ``prev`` linear that produce the input
    channel_map: torch.Tensor | None = None  # input channel -> producer channel (GQA repeat)
    prev_name: str = ""
    parent: nn.Module | None = None  # smallest module around the linears whose output a search compares
    parent_inputs: list[tuple[tuple, dict]] = field(default_factory=list)  # recorded (args, kwargs) of parent
    parent_tokens_sampled: bool = False  # parent_inputs are token samples, first tokens already dropped

    @property
    def in_features(self) -> int:
        return self.linears[0].in_features

    @property
    def n_scales(self) -> int:
        """How many independent scales: one per producer channel."""
        if self.channel_map is None:
            return self.in_features
        return int(self.channel_map.max()) + 1

    @property
    def foldable(self) -> bool:
        return self.prev is not None

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """Producer-channel scales -> one scale per input column of the linears."""
        return s if self.channel_map is None else s[self.channel_map.to(s.device)]

    def reduce_mean(self, per_input: torch.Tensor) -> torch.Tensor:
        """Per-input-channel statistic -> mean over the input channels that share a scale."""
        if self.channel_map is None:
            return per_input
        idx = self.channel_map.to(per_input.device).long()
        total = torch.zeros(self.n_scales, dtype=per_input.dtype, device=per_input.device)
        count = torch.zeros_like(total)
        total.index_add_(0, idx, per_input)
        count.index_add_(0, idx, torch.ones_like(per_input))
        return total / count.clamp_min(1)

    def weight(self) -> torch.Tensor:
        """The group's weights stacked along the output axis, float32 ``[sum N_i, K]``."""
        return torch.cat([lin.weight.detach().float() for lin in self.linears], 0)


def check_group(group: ScaleGroup) -> None:
    """Raise (before any weight changes) when the group cannot be scaled consistently."""
    ks = {lin.in_features for lin in group.linears}
    if len(ks) != 1:
        raise ValueError(f"linears {group.names} share an input but have different in_features {sorted(ks)}")
    if group.channel_map is not None and group.channel_map.numel() != group.in_features:
        raise ValueError(f"channel_map of {group.names} has {group.channel_map.numel()} entries, "
                         f"expected {group.in_features}")
    if group.prev is None:
        return
    width = _producer_width(group)
    if width != group.n_scales:
        raise ValueError(f"{group.prev_name or type(group.prev).__name__} produces {width} channels but "
                         f"{group.names} need {group.n_scales} scales; fix the architecture table entry")


def _producer_width(group: ScaleGroup) -> int:
    prev = group.prev
    if isinstance(prev, nn.Linear):
        rows = range(prev.out_features)[group.prev_rows] if group.prev_rows is not None else range(prev.out_features)
        return len(rows)
    weight = getattr(prev, "weight", None)
    if weight is None or weight.dim() != 1:
        raise ValueError(f"cannot fold scales into {type(prev).__name__}: it has no per-channel weight; "
                         f"supported producers are norms with a 1-D weight and nn.Linear")
    return weight.numel()


@torch.no_grad()
def fold_scales(group: ScaleGroup, s: torch.Tensor) -> None:
    """Multiply the linears' input columns by ``s`` and divide the producer's output by it.

    ``s`` has ``group.n_scales`` positive entries. The float function of the block is
    unchanged (up to rounding). Raises for a group with no producer: use an input scale.
    """
    if group.prev is None:
        raise ValueError(f"{group.names} have no producer to fold scales into")
    check_group(group)
    s = s.detach().float()
    s_in = group.expand(s)
    for lin in group.linears:
        lin.weight.mul_(s_in.to(lin.weight.dtype).unsqueeze(0))
    prev = group.prev
    if isinstance(prev, nn.Linear):
        rows = group.prev_rows if group.prev_rows is not None else slice(None)
        prev.weight[rows].div_(s.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias[rows].div_(s.to(prev.bias.dtype))
        return
    prev.weight.div_(s.to(prev.weight.dtype))
    bias = getattr(prev, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))


def equalize_block(groups: list[ScaleGroup], stats: dict,
                   choose_scales: Callable[[ScaleGroup, int], torch.Tensor]) -> None:
    """Choose and fold the scales of every foldable group of one block.

    ``stats`` maps each linear's name to its input statistics (``input_stats.InputStats``,
    one object shared by a group); ``choose_scales(group, i)`` returns ``group.n_scales``
    scales, ``i`` counting the groups consumer-first. Groups go consumer-first (reverse of
    block order) so that when a group's scales are folded into a producer linear, that
    producer's own group is then chosen on its already-rescaled weights. Every group is
    checked, and every linear's statistics looked up, before any weight changes.
    """
    for group in groups:
        check_group(group)
        missing = [n for n in group.names if n not in stats or stats[n].n == 0]
        if missing:
            raise ValueError(f"no calibration inputs were recorded for {missing}")
    for i, group in enumerate(reversed(groups)):
        if not group.foldable:
            continue
        s = choose_scales(group, i)
        fold_scales(group, s)
        s_in = group.expand(s)
        for st in {id(stats[n]): stats[n] for n in group.names}.values():  # shared objects once
            st.rescale(s_in)


def repeat_kv_map(num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor | None:
    """Attention-output channel -> value channel under grouped-query attention (None if 1:1)."""
    if num_kv_heads == num_heads:
        return None
    if num_heads % num_kv_heads:
        raise ValueError(f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}")
    rep = num_heads // num_kv_heads
    c = torch.arange(num_heads * head_dim)
    return (c // head_dim) // rep * head_dim + c % head_dim


def normalized_scales(s: torch.Tensor) -> torch.Tensor:
    """Scales are defined up to a common factor; centre them geometrically around 1."""
    s = s.clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def _phi3_v_rows(cfg) -> slice:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, (cfg.num_key_value_heads or cfg.num_attention_heads) * head_dim
    return slice(q + kv, q + 2 * kv)  # qkv_proj rows are [q | k | v]


# Producers that are a row slice of a fused linear, which the driver's table leaves as None:
# (model_type, first linear of the group) -> (producer, rows(config)).
FUSED_PRODUCERS = {
    ("phi3", "self_attn.o_proj"): ("self_attn.qkv_proj", _phi3_v_rows),
    ("phi3", "mlp.down_proj"): ("mlp.gate_up_proj",  # up = second half; down reads act(gate) * up
                                lambda cfg: slice(cfg.intermediate_size, 2 * cfg.intermediate_size)),
    ("gpt2", "attn.c_proj"): ("attn.c_attn", lambda cfg: slice(2 * cfg.n_embd, 3 * cfg.n_embd)),  # [q | k | v]
}


def scale_groups(block: nn.Module, arch, model_config=None) -> list[ScaleGroup]:
    """``blocks.Architecture.groups`` resolved on one block into ``ScaleGroup``s.

    A producer linear narrower than the group's input is accepted when grouped-query
    attention explains it (the scales are then tied per value channel); fused producers
    come from ``FUSED_PRODUCERS``; any other mismatch, or no producer, leaves the group
    unfoldable (GPT-2's ``mlp.c_proj`` after GELU: it is only clipped).
    """
    groups = []
    for lg in arch.groups:
        linears = [block.get_submodule(n) for n in lg.names]
        prev = block.get_submodule(lg.prev_op) if lg.prev_op else None
        parent = block.get_submodule(lg.parent) if lg.parent else block
        if len(lg.names) == 1 and parent is linears[0]:
            parent = None  # a lone linear's own output error is computed exactly from its inputs
        group = ScaleGroup(list(lg.names), linears, prev, prev_name=lg.prev_op or "", parent=parent)
        fused = FUSED_PRODUCERS.get((getattr(model_config, "model_type", None), lg.names[0]))
        if prev is None and fused is not None:
            group.prev, group.prev_name = block.get_submodule(fused[0]), fused[0]
            group.prev_rows = fused[1](model_config)
        produced = (len(range(group.prev.out_features)[group.prev_rows or slice(None)])
                    if isinstance(group.prev, nn.Linear) else None)
        if produced is not None and produced != group.in_features:
            group.channel_map = _gqa_map(model_config, produced, group.in_features)
            if group.channel_map is None:
                group.prev = None
        groups.append(group)
    return groups


def _gqa_map(model_config, produced: int, needed: int) -> torch.Tensor | None:
    heads = getattr(model_config, "num_attention_heads", None)
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    if not heads or not kv_heads or needed % heads:
        return None
    head_dim = getattr(model_config, "head_dim", None) or needed // heads
    if heads * head_dim != needed or kv_heads * head_dim != produced:
        return None
    return repeat_kv_map(heads, kv_heads, head_dim)

