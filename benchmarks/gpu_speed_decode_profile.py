"""Where a decode step's GPU time goes: linears against everything else, kernels per layer.

For the synthetic Llama-3-8B (gpu_speed_model.synthetic_llama), bf16 and int4 g128, at each batch:
the step each decoder captures in its CUDA graph, transformers' modules (``StaticDecoder``) and the
CUDA lean step (``CudaLeanDecoder``), run eagerly under torch.profiler (kernel times summed on the
device, so launch gaps do not count; the argmax and the token copy are in both); then both
graph-replayed for tokens/s; then both fed the same tokens, their logits against the reference's
(``agreement``).

    python benchmarks/gpu_speed_decode_profile.py --out /tmp/profile.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_speed_model import decoder_for, synthetic_llama, tokens_per_second  # noqa: E402 - same folder

from quant_core.config import QuantConfig  # noqa: E402
from quant_core.quantize import quantize  # noqa: E402

# kernel names of matmuls: ours (csrc/cuda_*.cuh, triton_gemv/gemm) and cuBLAS' families
LINEAR_NAMES = ("qmm_kernel", "wg_kernel", "gemv_kernel", "dequant_kernel", "_gemv", "_gemm", "gemm", "gemv",
                "cutlass", "nvjet", "xmma", "splitk")


def is_linear(name: str) -> bool:
    return any(key in name.lower() for key in LINEAR_NAMES)


def kernel_profile(dec, batch: int, vocab: int, steps: int = 2) -> dict:
    """Device time and kernel counts of ``steps`` steps, per step: the body each decoder captures in its
    graph, run eagerly (the graph replays the same kernels without the launch gaps)."""
    # under inference mode, as step() runs: the caches were made there and are written in place
    from torch.profiler import ProfilerActivity, profile

    token = dec.prefill(torch.randint(0, vocab, (batch, 16), device="cuda")).argmax(-1)
    for _ in range(3):  # kernels compile and tune, the graph is captured, before the profile
        token = dec.step(token).argmax(-1)
    body = dec._graph_body if hasattr(dec, "_graph_body") and not hasattr(dec, "_step_body") else dec._step_body
    torch.cuda.synchronize()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            dec._ids.copy_(token.reshape(-1, 1))
            token = body().argmax(-1)
        torch.cuda.synchronize()
    by_name = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(e, "device_time_total", None)
        us = getattr(e, "cuda_time_total", 0.0) if us is None else us
        by_name[e.name][0] += 1
        by_name[e.name][1] += us
    kernels = {n: {"count": c / steps, "us": t / steps, "linear": is_linear(n)} for n, (c, t) in by_name.items()}
    linear_us = sum(k["us"] for k in kernels.values() if k["linear"])
    other_us = sum(k["us"] for k in kernels.values() if not k["linear"])
    return {"linear_us": linear_us, "other_us": other_us,
            "linear_kernels": sum(k["count"] for k in kernels.values() if k["linear"]),
            "other_kernels": sum(k["count"] for k in kernels.values() if not k["linear"]),
            "top": sorted(([n[:90], k["count"], round(k["us"], 1), k["linear"]] for n, k in kernels.items()),
                          key=lambda r: -r[2])[:25]}


@torch.inference_mode()
def logits_along(dec, ids: torch.Tensor, tokens: torch.Tensor | None, steps: int) -> torch.Tensor:
    """fp32 logits [B, steps, vocab]: the prompt's, then each step's fed ``tokens`` [B, steps] (None: its own
    greedy tokens)."""
    out = [dec.prefill(ids).float()]
    for s in range(steps - 1):
        out.append(dec.step(out[-1].argmax(-1) if tokens is None else tokens[:, s]).float())
    return torch.stack(out, 1)


@torch.inference_mode()
def agreement(model, batch: int, steps: int = 8, fp32_reference: bool = False) -> dict:
    """Both steps fed the same tokens (the reference's greedy ones): each one's logits against the
    reference's (relative L2 per step) and how often its argmax is the reference's token. The reference
    is the module path (StaticDecoder), or with ``fp32_reference`` the same weights in fp32 through it,
    which tells whether either bf16 step is closer to the exact values."""
    from quant_core.decode import StaticDecoder

    ids = torch.randint(0, model.config.vocab_size, (batch, 24), device="cuda")
    max_len = 24 + steps + 1
    if fp32_reference:
        ref_model = copy.deepcopy(model).float()
        ref = logits_along(StaticDecoder(ref_model, batch, max_len), ids, None, steps)
        del ref_model
        torch.cuda.empty_cache()
    else:
        ref = logits_along(decoder_for(model, batch, max_len, "static"), ids, None, steps)
    tokens = ref.argmax(-1)
    out = {"reference": "fp32 module path" if fp32_reference else "module path", "rows": batch, "steps": steps}
    for step in ("static", "lean") if fp32_reference else ("lean",):
        got = logits_along(decoder_for(model, batch, max_len, step), ids, tokens, steps)
        out[step] = {"top1_equal": f"{int((got.argmax(-1) == tokens).sum())}/{tokens.numel()}",
                     "rel_l2_per_step": [round(float((got[:, s] - ref[:, s]).norm() / ref[:, s].norm()), 4)
                                         for s in range(steps)],
                     "max_abs": round(float((got - ref).abs().max()), 4),
                     "logit_scale": round(float(ref.abs().max()), 3)}
    return out


FORMATS = {"bf16": None, "int4": dict(weight_dtype="int4", group_size=128),
           "nf4": dict(weight_dtype="nf4", group_size=64), "int8": dict(weight_dtype="int8", group_size=-1)}


def ready_model(fmt: str, layers: int):
    """The synthetic Llama-3-8B in ``fmt`` (a FORMATS key; every linear, the head too, quantized), on the GPU."""
    t0 = time.perf_counter()
    model = synthetic_llama(layers)
    if FORMATS[fmt]:
        quantize(model, QuantConfig(**FORMATS[fmt], modules_to_not_convert=[]), progress=False)
    torch.cuda.empty_cache()
    print(f"{fmt}: model ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return model


def decode_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of every decode measurement script: decoder layers, batches, formats, the output file."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--formats", nargs="+", default=["bf16", "int4"])
    ap.add_argument("--out", type=Path, required=True)
    return ap


def main() -> None:
    ap = decode_arguments(__doc__)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers, "rows": []}
    for fmt in args.formats:
        model = ready_model(fmt, args.layers)
        for b in args.batches:
            row = {"weights": fmt, "batch": b}
            for step in ("static", "lean"):
                try:
                    measure(model, b, step, row, args)
                except Exception as exc:  # noqa: BLE001 - the other step's figures still come back
                    traceback.print_exc()
                    row[f"error_{step}"] = f"{type(exc).__name__}: {exc}"[:300]
            if "error_lean" not in row:
                row["agreement"] = agreement(model, b, fp32_reference=fmt == "bf16")
                print(f"{fmt} b{b} agreement: {row['agreement']}", flush=True)
            result["rows"].append(row)
            args.out.write_text(json.dumps(result, indent=1))
        del model
        torch.cuda.empty_cache()


def measure(model, b: int, step: str, row: dict, args) -> None:
    """One step's profile (unless --no-profile) and graph-replayed tokens/s, into ``row``."""
    fmt = row["weights"]
    if not args.no_profile:
        dec = decoder_for(model, b, 64, step)
        prof = kernel_profile(dec, b, model.config.vocab_size)
        del dec
        print(f"{fmt} b{b} {step}: linears {prof['linear_us']:.0f} us ({prof['linear_kernels']:.0f} kernels), "
              f"other {prof['other_us']:.0f} us ({prof['other_kernels']:.0f} kernels, "
              f"{prof['other_kernels'] / args.layers:.1f} a layer)", flush=True)
        for name, count, us, linear in prof["top"][:14]:
            print(f"    {us:9.1f} us {count:6.0f}x {'L' if linear else ' '} {name}", flush=True)
        row[f"profile_{step}"] = prof
    tps, mode, warm = tokens_per_second(model, b, step=step)
    row[f"tok_s_{step}"] = tps
    print(f"{fmt} b{b} {step}: {tps:.1f} tok/s ({mode}, first use {warm:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
