"""What the lean decode step needs from a model, per decoder family, gathered once.

Families (``model.config.model_type``): Llama, Mistral, Qwen2 and Qwen3 (separate q/k/v and
gate/up linears, fused here; Qwen2's qkv bias, Qwen3's per-head q/k norms) and Phi-3 (already
fused qkv and gate_up). Anything else keeps transformers' modules (``lean_reason`` says why).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .projection import Projection

# model_type -> (names of the q/k/v linears, names of gate/up) inside a decoder layer
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    "mistral": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    "qwen2": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    "qwen3": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")),
    "phi3": (("self_attn.qkv_proj",), ("mlp.gate_up_proj",)),
}


@dataclass
class Norm:
    weight: torch.Tensor  # float32
    eps: float

    @classmethod
    def of(cls, module: nn.Module) -> "Norm":
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
        return cls(module.weight.detach().float(), float(eps))


@dataclass
class LeanLayer:
    norm1: Norm
    qkv: Projection
    q_norm: Norm | None  # Qwen3: RMSNorm over each head's dims, before rotary
    k_norm: Norm | None
    o: Projection
    norm2: Norm
    gate_up: Projection
    down: Projection


@dataclass
class LeanModel:
    embed: nn.Module
    rotary: nn.Module
    layers: list[LeanLayer]
    norm: Norm
    head: Projection
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float
    intermediate: int


def lean_reason(model: nn.Module) -> str | None:
    """Why the lean step cannot run ``model`` (None: it can)."""
    why = family_reason(model)
    if why:
        return why
    device = next(model.parameters()).device
    if device.type != "cpu":
        return f"the lean step runs on CPU, the model is on {device}"
    return None


def family_reason(model: nn.Module) -> str | None:
    """Why ``model`` is not a decoder of ``FAMILIES`` with the modules a lean step reads (None: it is)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        return f"model_type {model_type!r} is not one of {', '.join(FAMILIES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(model, "lm_head") or not hasattr(inner, "rotary_emb"):
        return "the model lacks model.layers / model.rotary_emb / lm_head"
    attn_names, mlp_names = FAMILIES[model_type]
    for layer in inner.layers:
        for name in attn_names + mlp_names + ("self_attn.o_proj", "mlp.down_proj"):
            if not isinstance(_get(layer, name), nn.Module):
                return f"decoder layer has no {name}"
    return None


def _get(module: nn.Module, name: str):
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


@dataclass
class LayerModules:
    """One decoder layer's modules in the order a lean step (CPU or CUDA) runs them."""
    norm1: nn.Module
    qkv: list  # the linears reading the attention input (FAMILIES names them)
    q_norm: nn.Module | None  # Qwen3's per-head norms
    k_norm: nn.Module | None
    o: nn.Module
    norm2: nn.Module
    gate_up: list  # the linears reading the MLP input
    down: nn.Module


def layer_modules(model: nn.Module) -> list[LayerModules]:
    """Every decoder layer's modules (``family_reason`` must hold)."""
    attn_names, mlp_names = FAMILIES[model.config.model_type]
    return [LayerModules(layer.input_layernorm, [_get(layer, n) for n in attn_names],
                         getattr(layer.self_attn, "q_norm", None), getattr(layer.self_attn, "k_norm", None),
                         layer.self_attn.o_proj, layer.post_attention_layernorm, [_get(layer, n) for n in mlp_names],
                         layer.mlp.down_proj) for layer in model.model.layers]


# model -> (its tensors' identity and versions, its LeanModel): building one re-stacks every fused
# projection's kernel (~17 ms of a 15-token request's ~44 ms on SmolLM2), so requests share it
_BUILT: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple | None:
    """Which tensors the model holds, how often each was written in place, and which kernel each
    quantized linear holds: a LeanModel built at the same signature still matches the model. None
    where a tensor keeps no version (made in inference mode): then nothing is reused."""
    try:
        tensors = tuple((id(t), t.data_ptr(), t._version) for t in chain(model.parameters(), model.buffers()))
    except RuntimeError:
        return None
    kernels = tuple((id(m.__dict__.get("_kernel")), m.__dict__.get("forced_kernel"))
                    for m in model.modules() if "_kernel" in m.__dict__)
    return tensors, kernels


def lean_model(model: nn.Module) -> LeanModel:
    """The model's LeanModel, built once and reused while its modules, tensors and kernels stay the same."""
    built = _BUILT.get(model)
    if built is not None and built[0] is not None and built[0] == _signature(model):
        return built[1]
    lean = _build_lean_model(model)  # prepares kernels: the signature is taken after
    _BUILT[model] = (_signature(model), lean)
    return lean


def _build_lean_model(model: nn.Module) -> LeanModel:
    why = lean_reason(model)
    if why:
        raise UnsupportedModelError(f"the lean decode step cannot run this model: {why}; "
                                    "use quant_core.decode.StaticDecoder (transformers' own modules)")
    config, inner = model.config, model.model
    layers = [LeanLayer(Norm.of(p.norm1), Projection(p.qkv), None if p.q_norm is None else Norm.of(p.q_norm),
                        None if p.k_norm is None else Norm.of(p.k_norm), Projection([p.o]), Norm.of(p.norm2), Projection(p.gate_up),
                        Projection([p.down])) for p in layer_modules(model)]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return LeanModel(inner.embed_tokens, inner.rotary_emb, layers, Norm.of(inner.norm), Projection([model.lm_head]),
                     heads, kv_heads, head_dim, head_dim ** -0.5, config.intermediate_size)
