"""Walking a decoder block by block over calibration inputs, and the architecture facts it needs, kept as data.

Interface (stable; GPTQ, AWQ and TEQ are written against it)
------------------------------------------------------------
``ARCHITECTURES[model_type] -> Architecture``:

* ``layers``: dotted path to the ``nn.ModuleList`` of decoder blocks (``"model.layers"``).
* ``pre_modules``: modules that run before block 0 (embeddings, position/rotary
  embeddings); the driver moves only these (and one block at a time) to the compute device.
* ``groups``: ``LinearGroup``s in execution order (so iterating them is GPTQ's
  "true-sequential" order). A group is the linears that read the *same input*:
  ``names`` (relative to the block), ``prev_op`` (the block-relative module whose output
  is that input: a norm or a linear, so an input-channel scale ``s`` can be folded as
  ``prev_op.weight /= s`` — valid only when ``prev_op``'s output width equals the group's
  in_features; ``None`` when nothing can absorb it, so apply the scale to the input instead)
  and ``parent`` (the smallest block-relative module containing the group whose output a
  search can compare before/after scaling; ``""`` means the block itself).
* ``conv1d``: the linears are transformers ``Conv1D`` (GPT-2, weight ``[in, out]``); the
  driver converts them to ``nn.Linear`` in place before handing the block over.

``architecture_of(model)`` looks the facts up by ``model.config.model_type`` and says
which types are supported when it cannot.

``run_blockwise(model, calibration_batches, per_block_fn, device=None, progress=True, after_block_fn=None)``:

1. Runs the model on each calibration batch (a LongTensor ``[b, T]`` of input ids, or a
   dict of model kwargs) only up to block 0, capturing that block's inputs: the hidden
   states plus every other positional/keyword argument (attention mask, position ids,
   rotary ``position_embeddings``...) into a ``BlockInputs``.
2. For each block ``i``: moves it to ``device``, calls ``per_block_fn(block, inputs, i)``
   (which quantizes the block in place: replace linears, rescale weights...; it runs
   *with* autograd enabled so TEQ can train, everything else in the driver is no_grad),
   then runs the now-quantized block on ``inputs`` and makes its outputs the next block's
   inputs (``BlockInputs.forward``), moves the block back where it came from and calls
   ``after_block_fn(block, i)`` (e.g. to swap linears that computed with fake-quantized
   weights for their packed modules, now that the block's outputs have moved on).

Only one block and one block's activations live on ``device`` at a time. ``device=None``
means CUDA when available, else CPU. ``per_block_fn`` may return anything; it is ignored.
Helpers for per-block work: ``BlockInputs.forward(module, hidden=None, block_args=True)``
runs a block (or, with ``block_args=False``, a linear/norm/MLP) on all batches; ``record_inputs(block, names, fn)`` is a
context manager that calls ``fn(name, x)`` with every input a named sub-module receives.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm
from .errors import UnsupportedModelError


@dataclass(frozen=True)
class LinearGroup:
    names: tuple[str, ...]
    prev_op: str | None
    parent: str


@dataclass(frozen=True)
class Architecture:
    layers: str
    pre_modules: tuple[str, ...]
    groups: tuple[LinearGroup, ...]
    conv1d: bool = False
    # For token-weighted Hessians (``algorithms.hessians``), block-relative: the attention module, its
    # value projection (None where v is a slice of a fused weight) and the MLP's output projection.
    attention: str | None = None
    value: str | None = None
    mlp_output: str | None = None

    def linear_names(self) -> list[str]:
        return [name for group in self.groups for name in group.names]


_LLAMA_LIKE = Architecture(
    layers="model.layers",
    pre_modules=("model.embed_tokens", "model.rotary_emb"),
    groups=(
        LinearGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", "self_attn"),
        LinearGroup(("self_attn.o_proj",), "self_attn.v_proj", "self_attn.o_proj"),  # foldable only without GQA
        LinearGroup(("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", "mlp"),
        LinearGroup(("mlp.down_proj",), "mlp.up_proj", "mlp.down_proj"),  # act(gate) * up is linear in up
    ),
    attention="self_attn",
    value="self_attn.v_proj",
    mlp_output="mlp.down_proj",
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": Architecture(
        layers="model.layers",
        pre_modules=("model.embed_tokens", "model.rotary_emb"),
        groups=(
            LinearGroup(("self_attn.qkv_proj",), "input_layernorm", "self_attn"),
            LinearGroup(("self_attn.o_proj",), None, "self_attn.o_proj"),  # v is a slice of fused qkv
            LinearGroup(("mlp.gate_up_proj",), "post_attention_layernorm", "mlp"),
            LinearGroup(("mlp.down_proj",), None, "mlp.down_proj"),  # up is a slice of fused gate_up
        ),
        mlp_output="mlp.down_proj",
    ),
    "gpt2": Architecture(
        layers="transformer.h",
        pre_modules=("transformer.wte", "transformer.wpe", "transformer.drop"),
        groups=(
            LinearGroup(("attn.c_attn",), "ln_1", "attn"),
            LinearGroup(("attn.c_proj",), None, "attn.c_proj"),  # v is a slice of fused c_attn
            LinearGroup(("mlp.c_fc",), "ln_2", "mlp"),
            LinearGroup(("mlp.c_proj",), None, "mlp.c_proj"),  # GELU is not scale-equivariant
        ),
        conv1d=True,
        mlp_output="mlp.c_proj",
    ),
    "opt": Architecture(
        layers="model.decoder.layers",
        pre_modules=("model.decoder.embed_tokens", "model.decoder.embed_positions", "model.decoder.project_in"),
        groups=(
            LinearGroup(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn_layer_norm",
                        "self_attn"),
            LinearGroup(("self_attn.out_proj",), "self_attn.v_proj", "self_attn.out_proj"),
            LinearGroup(("fc1",), "final_layer_norm", "fc1"),
            LinearGroup(("fc2",), "fc1", "fc2"),  # ReLU(s * x) = s * ReLU(x) for s > 0
        ),
        attention="self_attn",
        value="self_attn.v_proj",
        mlp_output="fc2",
    ),
}




def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"calibrated quantization does not know the decoder layout of model_type {model_type!r}; "
            f"supported: {', '.join(ARCHITECTURES)}. Use algorithm='rtn' (needs no calibration), "
            f"or add an entry to quant_core.blocks.ARCHITECTURES")
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module, arch: Architecture | None = None) -> nn.ModuleList:
    arch = arch or architecture_of(model)
    return model.get_submodule(arch.layers)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _to(obj: Any, device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class BlockInputs:
    """Inputs of one decoder block for every calibration batch (on the compute device)."""
    hidden: list[torch.Tensor] = field(default_factory=list)  # [b, T, H] per batch
    args: list[tuple] = field(default_factory=list)  # other positional args per batch
    kwargs: list[dict] = field(default_factory=list)  # keyword args per batch (masks, rotary embeddings)

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def n_tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    def forward(self, module: nn.Module, hidden: list[torch.Tensor] | None = None,
                block_args: bool = True) -> list[torch.Tensor]:
        """Run ``module`` on every batch and return the first output of each.

        ``hidden`` replaces the block's hidden states (e.g. a norm's outputs when running a
        sub-module); ``block_args=False`` drops the block's other arguments (for linears,
        norms and MLPs, which take only the hidden states)."""
        outs = []
        for h, args, kwargs in zip(hidden or self.hidden, self.args, self.kwargs):
            out = module(h, *args, **kwargs) if block_args else module(h)
            outs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return outs

    def to(self, device) -> "BlockInputs":
        return BlockInputs(_to(self.hidden, device), _to(self.args, device), _to(self.kwargs, device))


@contextlib.contextmanager
def record_inputs(block: nn.Module, names: Iterable[str], fn: Callable[[str, torch.Tensor], None]):
    """Call ``fn(name, x)`` with the input of each named sub-module on every forward, inside the block."""
    handles = []
    for name in names:
        def hook(_module, inputs, _name=name):
            fn(_name, inputs[0])
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    pass


def _batch_kwargs(batch) -> dict:
    if isinstance(batch, torch.Tensor):
        return {"input_ids": batch if batch.dim() == 2 else batch.unsqueeze(0)}
    if isinstance(batch, dict):
        return dict(batch)
    raise TypeError(f"a calibration batch must be a LongTensor of input ids or a dict of model inputs, "
                    f"not {type(batch).__name__}")


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, calibration_batches, device=None,
                               arch: Architecture | None = None) -> BlockInputs:
    """Run the model up to block 0 on each batch and keep that block's inputs on ``device``."""
    arch = arch or architecture_of(model)
    device = torch.device(device) if device is not None else default_device()
    layers = decoder_layers(model, arch)
    captured = BlockInputs()

    def catch(_module, args, kwargs):
        if args:
            hidden, rest = args[0], args[1:]
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.hidden.append(hidden.detach().to(device))
        captured.args.append(_to(tuple(rest), device))
        captured.kwargs.append(_to(dict(kwargs), device))
        raise _StopForward

    pre = [model.get_submodule(n) for n in arch.pre_modules if _has_submodule(model, n)]
    homes = [_device_of(m) for m in pre]
    for m in pre:
        m.to(device)
    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in calibration_batches:
            try:
                model(**_to(_batch_kwargs(batch), device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
        for m, home in zip(pre, homes):
            m.to(home)
    if not captured.hidden:
        raise ValueError("no calibration batches were given: pass at least one batch of input ids")
    return captured


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        return model.get_submodule(name) is not None
    except AttributeError:
        return False


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def linearize_conv1d(block: nn.Module) -> None:
    """Replace transformers ``Conv1D`` (weight ``[in, out]``) by an equal ``nn.Linear`` in place."""
    from transformers.pytorch_utils import Conv1D

    for name, mod in list(block.named_modules()):
        if isinstance(mod, Conv1D):
            in_f, out_f = mod.weight.shape
            lin = nn.Linear(in_f, out_f, bias=mod.bias is not None, device=mod.weight.device,
                            dtype=mod.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            parent_name, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent_name) if parent_name else block, child, lin)


def run_blockwise(model: nn.Module, calibration_batches, per_block_fn: Callable[[nn.Module, BlockInputs, int], Any],
                  device=None, progress: bool = True, desc: str = "blocks",
                  after_block_fn: Callable[[nn.Module, int], Any] | None = None,
                  forward_context: Callable[[torch.device], Any] = lambda _device: contextlib.nullcontext()) -> None:
    """Quantize ``model`` block by block (see the module docstring for the contract);
    ``forward_context(device)`` wraps each block's output forward (e.g. bf16 autocast)."""
    arch = architecture_of(model)
    device = torch.device(device) if device is not None else default_device()
    layers = decoder_layers(model, arch)
    inputs = capture_first_block_inputs(model, calibration_batches, device, arch)
    for i in tqdm(range(len(layers)), desc=desc, disable=not progress, unit="block"):
        block = layers[i]
        home = _device_of(block)
        block.to(device)
        if arch.conv1d:
            linearize_conv1d(block)
        per_block_fn(block, inputs, i)
        with torch.no_grad(), forward_context(device):  # outputs keep the inputs' dtype under autocast
            inputs.hidden = [out.detach().to(h.dtype) for out, h in zip(inputs.forward(block), inputs.hidden)]
        block.to(home)
        if after_block_fn is not None:
            after_block_fn(block, i)
        if device.type == "cuda":
            torch.cuda.empty_cache()
