"""Write a quantllm Llama-family model as a GGUF file llama.cpp runs, with gguf-py's writer.

Each quantized layer goes out in the GGUF type that holds it exactly (no requantization):
int4 symmetric g32 -> Q4_0, int4 with float group minimums g32 -> Q4_1, int8 symmetric
g32 -> Q8_0. Float tensors are written F32, so llama.cpp computes with the very weights
quantllm uses. The tokenizer (BPE or SentencePiece-style) goes in as llama.cpp expects it.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gguf
import torch
from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

from ..errors import ExportError
from ..packed import PackedWeight
from . import _gguf_blocks as blocks
from ._checkpoint import float_state, quantized_layers

log = logging.getLogger("quant_core.interop")
EXPORTABLE = ("int4_fullrange or int4_clip with scheme 'sym' and group_size 32 (-> Q4_0), int4 with float "
              "group minimums and group_size 32 as imported from a Q4_1 GGUF (-> Q4_1), int8 with scheme 'sym' "
              "and group_size 32 (-> Q8_0); fp16 scales; no act-order g_idx")
ARCHITECTURES = ("llama",)
FILE_TYPES = {"Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q8_0": "MOSTLY_Q8_0"}


def gguf_type(name: str, packed: PackedWeight) -> str:
    """The GGUF type that holds this layer exactly, or ExportError naming those that exist."""
    fmt, kind = packed.fmt, None
    if packed.group_size == blocks.QK and packed.g_idx is None and _fp16_exact(packed.scales):
        if fmt.bits == 4 and not fmt.is_codebook and packed.zero_mode == "none":
            kind = "Q4_0"
        elif fmt.bits == 4 and not fmt.is_codebook and packed.zero_mode == "min" and _fp16_exact(packed.zeros):
            kind = "Q4_1"
        elif fmt.name == "int8" and packed.zero_mode == "none":
            kind = "Q8_0"
    if kind is None:
        zeros = {"none": "symmetric", "int": "integer zero points", "min": "float minimums"}[packed.zero_mode]
        raise ExportError(f"cannot export layer {name} to GGUF exactly: it is {fmt.name}, {zeros}, group_size "
                          f"{packed.group_size}{', act-order g_idx' if packed.g_idx is not None else ''}, "
                          f"{packed.scales.dtype} scales. GGUF can hold: {EXPORTABLE}. "
                          f"Re-quantize with e.g. QuantConfig(weight_dtype='int4', group_size=32, scheme='sym')")
    return kind


def _fp16_exact(t: torch.Tensor) -> bool:
    return t.dtype == torch.float16 or torch.equal(t.half().to(t.dtype), t)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind not in ("default", None):
        raise ExportError(f"rope scaling {kind!r} is not written to GGUF by this exporter; only plain RoPE models")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _write_hparams(writer, config, file_type: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[file_type]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer, tokenizer, vocab_size: int, pre: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            vocab, model_name = BpeVocab(Path(tmp)), "gpt2"
        except Exception:  # not byte-level BPE: SentencePiece-style (llama)
            vocab, model_name = LlamaHfVocab(Path(tmp)), "llama"
        tokens, types = [], []
        for text, _score, toktype in vocab.all_tokens():
            tokens.append(text)
            types.append(toktype)
        if len(tokens) < vocab_size:  # embedding rows beyond the tokenizer: llama.cpp wants one token each
            pad = vocab_size - len(tokens)
            tokens += [f"[PAD{i}]".encode() for i in range(pad)]
            types += [gguf.TokenType.UNUSED] * pad
        writer.add_tokenizer_model(model_name)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        SpecialVocab(Path(tmp), load_merges=model_name == "gpt2", n_vocab=len(tokens)).add_to_gguf(writer)


def export_gguf(model, tokenizer, out, tokenizer_pre: str = "default", progress: bool = True) -> Path:
    """Write ``model`` to the GGUF file ``out`` (see the module docstring for the type mapping).
    ``tokenizer_pre`` names llama.cpp's pre-tokenizer (e.g. "smollm", "llama-bpe"; "default" works
    for most BPE vocabularies)."""
    # transformers at call time: it takes seconds to import, and `import quant_core` reaches this module
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise ExportError(f"GGUF export supports {', '.join(ARCHITECTURES)} models; this is {config.model_type!r}")
    if tokenizer is None:
        raise ExportError("GGUF files carry their tokenizer: pass the model's tokenizer")
    layers = quantized_layers(model)
    kinds = {name: gguf_type(name, p) for name, p in layers.items()}  # all refusals before writing
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    processor = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                             "num_key_value_heads": config.num_key_value_heads})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        main = max(set(kinds.values()), key=list(kinds.values()).count)
        _write_hparams(writer, config, main)
        writer.add_name(getattr(config, "_name_or_path", "") or "quantllm export")
        _write_tokenizer(writer, tokenizer, config.vocab_size, tokenizer_pre)
        tied = bool(getattr(config, "tie_word_embeddings", False))
        for hf_name, t in float_state(model).items():
            if tied and hf_name == "lm_head.weight":
                continue
            writer.add_tensor(_gguf_name(names, hf_name), t.float().numpy())
        for name, packed in layers.items():
            target = _gguf_name(names, name + ".weight")
            codes, scales, zeros = packed.codes(), packed.scales, packed.zeros
            perm = blocks.row_permutation(processor, target, packed.out_features)
            if isinstance(perm, torch.Tensor):  # llama.cpp's row order = inverse of transformers' reorder
                inv = torch.argsort(perm)
                codes, scales = codes[inv], scales[inv]
                zeros = None if zeros is None else zeros[inv]
            raw = blocks.encode(codes, scales, zeros, kinds[name])
            writer.add_tensor(target, raw, raw_shape=raw.shape,
                              raw_dtype=getattr(gguf.GGMLQuantizationType, kinds[name]))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        tmp.replace(out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def _gguf_name(names, hf_name: str) -> str:
    base, _, suffix = hf_name.rpartition(".")
    mapped = names.get_name(base)
    if mapped is None:
        raise ExportError(f"tensor {hf_name} has no GGUF name for the llama architecture")
    return f"{mapped}.{suffix}"
