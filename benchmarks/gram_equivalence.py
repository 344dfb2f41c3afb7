"""Per-layer equivalence of the bf16 Gram kernel's Hessians (issue 19 part 5, docs/calibration_speed.md).

GPTQ is chaotic (a 1e-7 change in one Hessian gives another draw of the codes), so the kernel is
judged per layer on identical inputs, not by matching codes: during one bf16 calibration the fp32
``addmm_`` Hessian of the same inputs is accumulated beside the kernel's, and each layer is solved
with both. Printed per layer: the Hessian's relative Frobenius error, and the layer loss
``trace(dW H dW^T) / trace(W H W^T)`` (H: the fp32 Hessian) of each solution.

    python benchmarks/gram_equivalence.py --blocks 4 --n-samples 16
"""
from __future__ import annotations

import argparse
import math

import torch

from quant_core import QuantConfig, quantize
from quant_core.algorithms import gptq as gptq_module
from quant_core.algorithms.hessians import Hessian
from quant_core.loading import load_model
from quant_core.primitives import default_g_idx, dequantize_weight, output_error


def shadowing_add(original):
    """Hessian.add that also keeps the fp32 addmm_ Hessian of the same inputs in ``.shadow``."""
    def add(self, x, token_weights=None):
        if not hasattr(self, "shadow"):
            self.shadow = torch.zeros_like(self.matrix)
        xf = x.detach().reshape(-1, x.shape[-1]).float()
        n = self.n + xf.shape[0]
        self.shadow *= self.n / n
        xf = xf * math.sqrt(2 / n)
        if token_weights is not None:
            xf = xf * token_weights.detach().reshape(-1, 1).float().sqrt()
        self.shadow.addmm_(xf.t(), xf)
        original(self, x, token_weights)
    return add


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--n-samples", type=int, default=16)
    args = p.parse_args()
    model, tok = load_model(None)
    model.model.layers = model.model.layers[:args.blocks]
    model.config.num_hidden_layers = args.blocks
    Hessian.add = shadowing_add(Hessian.add)
    original_for, original_solve = gptq_module.hessian_for, gptq_module.gptq
    current = {}

    def hessian_for(block, name, group, hessians):
        h = original_for(block, name, group, hessians)
        swapped = {k: type("Shadow", (), {"matrix": v.shadow})() for k, v in hessians.items()}
        current.update(name=f"{block.index}.{name}", shadow=original_for(block, name, group, swapped))
        return h

    def solve(weight, h, config):
        ref = current["shadow"]
        result = original_solve(weight, h, config)
        other = original_solve(weight, ref, config)
        w = weight.detach().float()
        total = output_error(w, ref)
        losses = [(output_error(w - dequantized(r, config, w), ref) / total).item() for r in (result, other)]
        err = ((h - ref).norm() / ref.norm()).item()
        same = (result.codes == other.codes).float().mean().item()
        print(f"{current['name']:>28}  H rel err {err:.2e}  loss kernel {losses[0]:.6f}  fp32 {losses[1]:.6f}"
              f"  ratio {losses[0] / losses[1]:.4f}  same codes {same:.3f}", flush=True)
        return result

    gptq_module.hessian_for, gptq_module.gptq = hessian_for, solve
    cfg = QuantConfig(algorithm="gptq", act_order=False, calibration_dtype="bf16", n_samples=args.n_samples,
                      weight_dtype="int4_fullrange", group_size=128, scheme="sym")
    quantize(model, cfg, tokenizer=tok, progress=False, device="cpu")


def dequantized(result, config, w):
    g_idx = result.g_idx if result.g_idx is not None else default_g_idx(w.shape[1], config.group_size)
    return dequantize_weight(result.codes, result.scales, result.zeros, config.format, g_idx)


if __name__ == "__main__":
    main()
