"""Per-layer output error of RTN, GPTQ and QuantEase on real SmolLM2 layers (issue 19), a check
that fits a small CPU: the Hessians of a few linear layers from the *float* model's inputs, then
each solver on the same Hessian. Error = tr(dW H dW^T) / tr(W H W^T) in percent (lower is better).

    python benchmarks/quantease_layers.py --blocks 5,20 --n-samples 32
    python benchmarks/quantease_layers.py --iters 5,10,20,30   # QuantEase's num_iter sweep

Prints one line per (setting, method): the mean relative error over the layers and CPU seconds
(one thread). Not a perplexity: errors compound through a real (sequential) calibration.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from safetensors.torch import load_file, save_file

from quant_core import QuantConfig
from quant_core.algorithms.gptq import Hessian, gptq
from quant_core.algorithms.quantease import gptq_quantease, quantease
from quant_core.algorithms.rtn import rtn
from quant_core.calibration import calibration_batches
from quant_core.loading import load_model
from quant_core.primitives import output_error

KINDS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
SETTINGS = {"int4_g128_sym": dict(weight_dtype="int4_fullrange", group_size=128, scheme="sym"),
            "int3_g128_asym": dict(weight_dtype="int3", group_size=128, scheme="asym"),
            "int4_pc_asym": dict(weight_dtype="int4_fullrange", group_size=-1, scheme="asym"),
            "int3_pc_asym": dict(weight_dtype="int3", group_size=-1, scheme="asym")}


def methods(iters: list[int]) -> dict:
    def rtn_solve(w, h, cfg):
        return rtn(w, cfg)

    out = {"RTN": (rtn_solve, dict(algorithm="rtn")), "RTN clip": (rtn_solve, dict(algorithm="rtn", mse_clip=True)),
           "GPTQ": (gptq, dict(algorithm="gptq")), "GPTQ act_order": (gptq, dict(algorithm="gptq", act_order=True))}
    out.update({f"QuantEase {n}": (quantease, dict(algorithm="quantease", num_iter=n)) for n in iters})
    n = max(iters)
    out[f"QuantEase {n} act_order"] = (quantease, dict(algorithm="quantease", num_iter=n, act_order=True))
    out[f"GPTQ->QuantEase {n}"] = (gptq_quantease, dict(algorithm="gptq_quantease", num_iter=n, act_order=True))
    for structure in ("unstructured", "columns"):
        out[f"QuantEase {n} +1% {structure}"] = (quantease, dict(algorithm="quantease", num_iter=n,
                                                                  outlier_fraction=0.01, outlier_structure=structure))
    return out


def hessians(model, tok, blocks: list[int], n_samples: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (weight, H) for each chosen layer, H from the float model's inputs."""
    found, hooks = {}, []
    for b in blocks:
        for kind in KINDS:
            name = f"model.layers.{b}.{kind}"
            layer = model.get_submodule(name)
            found[name] = (layer.weight.detach(), Hessian(layer.in_features))
            hooks.append(layer.register_forward_hook(lambda m, args, out, h=found[name][1]: h.add(args[0])))
    with torch.no_grad():
        for batch in calibration_batches(tok, n_samples=n_samples, seqlen=512, seed=0, batch_size=8):
            model(batch)
    for hook in hooks:
        hook.remove()
    return {name: (w, h.matrix) for name, (w, h) in found.items()}


def load_or_capture(args) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if args.cache and os.path.exists(args.cache):
        flat = load_file(args.cache)
        return {name[:-2]: (flat[name], flat[name[:-2] + ".H"]) for name in flat if name.endswith(".W")}
    model, tok = load_model(None)
    start = time.perf_counter()
    layers = hessians(model, tok, [int(b) for b in args.blocks.split(",")], args.n_samples)
    print(f"Hessians of {len(layers)} layers in {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")
    if args.cache:
        save_file({f"{n}.{part}": t.contiguous() for n, (w, h) in layers.items() for part, t in (("W", w), ("H", h))},
                  args.cache)
    return layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default="5,20")
    p.add_argument("--n-samples", type=int, default=32)
    p.add_argument("--iters", default="20")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all)")
    p.add_argument("--cache", default=None, help="safetensors file keeping the weights and Hessians between runs")
    args = p.parse_args()
    layers = load_or_capture(args)
    torch.set_num_threads(1)
    chosen = methods([int(n) for n in args.iters.split(",")])
    if args.methods:
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    for setting in args.settings.split(","):
        for label, (solve, fields) in chosen.items():
            cfg = QuantConfig(**SETTINGS[setting], **fields)
            errors, cpu = [], time.process_time()
            for w, h in layers.values():
                dw = w.float() - solve(w, h, cfg).pack(cfg).dequantize()
                errors.append(100 * output_error(dw, h).item() / output_error(w.float(), h).item())
            per_layer = " ".join(f"{e:.2f}" for e in errors)
            print(f"{setting:15s} {label:32s} mean {sum(errors) / len(errors):6.3f} %  "
                  f"cpu {time.process_time() - cpu:6.1f} s  [{per_layer}]", flush=True)


if __name__ == "__main__":
    main()
