"""QuantConfig's settings of the calibrated algorithms (GPTQ, QuantEase, AWQ, TEQ, SignRound): fields only.

Which algorithm owns which field is ``algorithm_settings.ALGORITHM_SETTINGS``; ``config.QuantConfig``
inherits these fields and refuses a setting of an algorithm other than the chosen one.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Upper bounds no useful quantization reaches: larger values are typos that would run for hours or
# allocate terabytes before failing.
MAX_CALIBRATION_TOKENS = 1 << 24  # n_samples * seqlen (GPTQ's reference uses 128 * 2048 = 2**18)
MAX_COUNT = 1 << 16  # samples, batches, block widths
NUM_ITER_DEFAULT = 20
# Settings that mean something only with scale_tuning_steps > 0.
SCALE_TUNING_SETTINGS = ("scale_tuning_lr", "scale_tuning_batch_windows", "scale_tuning_objective")


class AlgorithmFields(BaseModel):
    """The calibrated algorithms' settings (each described where it is declared)."""

    # GPTQ.
    damp_percent: float = Field(0.01, gt=0, lt=1, description="GPTQ: Hessian damping as a fraction of its mean "
                                                              "diagonal; raised automatically if Cholesky fails.")
    act_order: bool = Field(False, description="GPTQ: quantize columns in order of decreasing Hessian diagonal "
                            "(desc_act); on by default for GPTQ at 3 bits and below (with mse_clip).")
    static_groups: bool = Field(False, description="GPTQ act_order: fix group qparams before reordering "
                                                   "(no g_idx needed at inference).")
    true_sequential: bool = Field(True, description="GPTQ, QuantEase: quantize a block's linear groups one after "
                                                    "another, each seeing the previous groups' quantized outputs.")
    block_size: int = Field(128, gt=0, le=MAX_COUNT, description="GPTQ, QuantEase: columns per lazy-batch (blocked) update.")
    token_weighting: bool = Field(True, description="GPTQ, QuantEase: weigh each calibration token in the value "
                                  "projection's Hessian by the squared attention it receives and in the MLP output "
                                  "projection's by 1/mean(residual^2) (quant_core/algorithms/hessians.py); False: "
                                  "the plain Hessian of the GPTQ paper.")
    mlp_out_shrinkage: float = Field(0.5, ge=0, le=1, description="GPTQ, QuantEase: blend the MLP output "
                                     "projection's Hessian with its diagonal, (1-s)H + s diag(H), so it fits the "
                                     "calibration text's channel correlations less (0: off; 1: each column alone).")
    hessian_shrinkage: float = Field(0.5, ge=0, le=1, description="GPTQ: blend every other linear's Hessian "
                                     "with its diagonal the same way, so the error feedback leans less on channel "
                                     "correlations of the calibration text (issue 16: int4 g128 closed 40 % of RTN's "
                                     "legal-ood gap at 0.5, 13-21 % at 0 in four draws; docs/gptq_ood_notes.md). QuantEase and "
                                     "GPTQ->QuantEase do not use it (not measured there).")
    # QuantEase (act_order, true_sequential and block_size as GPTQ's).
    num_iter: int = Field(NUM_ITER_DEFAULT, gt=0, le=1000, description="QuantEase: coordinate-descent sweeps over "
                                                                       "each layer's columns.")
    outlier_fraction: float = Field(0.0, ge=0, lt=0.5, description="QuantEase: fraction of each layer's weights "
                                    "kept in fp16 as a sparse residual (e.g. 0.01); 0 for none.")
    outlier_structure: Literal["unstructured", "columns"] = Field(
        "unstructured", description="QuantEase outliers: any weights (unstructured) or whole input columns.")
    # AWQ.
    awq_n_grid: int = Field(20, gt=0, le=1000, description="AWQ: ratios r in [0, 1) tried by the scale search "
                                                  "(s = x_mean**r / w_mean**(1 - r)).")
    awq_grid_step: int = Field(1, gt=0, le=1000, description="AWQ: the scale search scores every awq_grid_step-th "
                               "ratio (and the last), then the best one's neighbours at halved distances down to 1 "
                               "(4: 10 of the 20 ratios); the same choice as every ratio (1) where the error is "
                               "unimodal in the ratio (quant_core/algorithms/grid_search.py).")
    awq_clip_grid: int = Field(20, gt=0, le=1000, description="AWQ: steps of the clipping search; range ratios "
                                                     "1 - i / awq_clip_grid are tried.")
    awq_clip_max_shrink: float = Field(0.5, ge=0, lt=1, description="AWQ: the clipping search narrows a "
                                                                     "group's range by less than this fraction.")
    awq_parent_batches: int | None = Field(None, ge=0, le=MAX_COUNT, description="AWQ: calibration batches whose "
                                           "attention/MLP outputs the scale search compares (0: each linear's own "
                                           "output). None (the default): 1 on a CPU, all (32) elsewhere "
                                           "(quant_core/awq_search_auto.py, as awq_mlp_token_stride and awq_scale_ridge); "
                                           "the saved config records the value.")
    awq_parent_batch_choice: Literal["first", "spread"] = Field(
        "spread", description="AWQ: when awq_parent_batches is fewer than the calibration batches, which ones the "
        "scale search compares: the first (the start of the text: the windows are in text order), or spread "
        "evenly over all (the middle batch of each equal stretch).")
    awq_mlp_token_stride: int | None = Field(None, ge=1, le=MAX_COUNT, description="AWQ: > 1: the scale search of "
                                             "a group whose parent acts on each token alone (the MLP) compares every "
                                             "n-th token of all calibration windows instead of awq_parent_batches whole "
                                             "batches (attention keeps whole windows); 1: whole batches for every "
                                             "parent. None (the default): 32 on a CPU, 1 elsewhere.")
    awq_duo_scaling: bool = Field(True, description="AWQ: scales from activations and weights (AutoAWQ's duo "
                                                    "scaling); False: from activations alone.")
    awq_scale_ridge: float | None = Field(None, ge=0, le=1e6, description="AWQ: the scale search also counts "
                                          "inputs the calibration text never showed, as an isotropic part ridge * "
                                          "trace(H) / K of each input's Hessian H (K channels): larger values keep "
                                          "scales nearer RTN's (0: off). None (the default): 1.0 on a CPU (its "
                                          "search sees fewer windows), 0.3 elsewhere (since session 9, issue 16).")
    awq_hessian_shrinkage: float = Field(0.0, ge=0, le=1, description="AWQ: the clipping search and a lone "
                                         "linear's scale search measure error with (1-s)H + s diag(H), as GPTQ's "
                                         "hessian_shrinkage, so they lean less on the calibration text's channel "
                                         "correlations (0: off).")
    # TEQ.
    teq_steps: int = Field(200, ge=0, le=100_000, description="TEQ: Adam steps per group of linears sharing an input.")
    teq_lr: float = Field(5e-3, gt=0, le=1, description="TEQ: Adam learning rate on the log-scales.")
    teq_batch_tokens: int = Field(256, gt=0, le=MAX_CALIBRATION_TOKENS, description="TEQ: token rows per training step.")
    teq_keep_tokens: int = Field(4096, gt=0, le=MAX_CALIBRATION_TOKENS, description="TEQ: token rows kept per group (a uniform sample "
                                                         "of all calibration tokens) to train on.")
    teq_scale_ridge: float = Field(0.3, ge=0, le=1e6, description="TEQ: training and the check against s = 1 also "
                                   "count an isotropic input ridge * trace(H) / K (inputs the calibration text never "
                                   "showed, as awq_scale_ridge): larger values keep scales nearer 1 (0: off; 0.3 since session 8, issue 16).")
    teq_scale_check: Literal["all", "held_out"] = Field(
        "all", description="TEQ: trained scales are kept only if they beat s = 1 on all calibration tokens, or "
                           "(held_out) on those it did not train on.")
    teq_hessian_shrinkage: float = Field(0.0, ge=0, le=1, description="TEQ: training and the check against s = 1 "
                                         "count each input's channel correlations by 1 - s (s diag(H) stands for "
                                         "the rest), as GPTQ's hessian_shrinkage (0: off).")
    teq_clip_search: bool = Field(True, description="TEQ: after folding its scales, narrow each group's range "
                                  "by AWQ's clipping search (awq_clip_grid / awq_clip_max_shrink at their defaults; "
                                  "on since session 8, issue 16).")

    # SignRound (quant_core/algorithms/signround.py).
    signround_steps: int = Field(200, gt=0, le=100_000, description="SignRound: signed-gradient steps per block.")
    signround_lr: float | None = Field(None, gt=0, le=1, description="SignRound: the first step's size (each "
                                       "parameter moves by lr * sign(gradient), decaying linearly to 0); None: "
                                       "1 / signround_steps.")
    signround_batch_windows: int = Field(8, gt=0, le=MAX_COUNT, description="SignRound: calibration windows per "
                                         "step (taken from one calibration batch, so at most calibration_batch_size).")
    signround_target: Literal["float_block", "float_model"] = Field(
        "float_model", description="SignRound: what a block's outputs are trained towards: the float model's own "
        "hidden states there (AutoRound's; the default since session 9, better in every column measured), which "
        "also asks each block to undo the error of the blocks before it, or the float block's on the same "
        "(quantized) inputs.")
    signround_token_weighting: bool = Field(False, description="SignRound: weigh each token's squared output "
                                            "error by 1/mean(target^2), the scale the next RMSNorm divides it by, "
                                            "so the attention-sink token's huge hidden state does not decide the "
                                            "fit (as GPTQ's token_weighting for down_proj); False: plain MSE.")
    signround_start: Literal["rtn", "gptq", "quantease"] = Field(
        "rtn", description="SignRound: the codes and ranges its learned rounding starts from and refines: RTN's "
        "(the paper's), or a layer solver's (GPTQ or QuantEase at their defaults, on each linear's Hessian over "
        "the block's calibration inputs, without GPTQ's hessian_shrinkage); a block keeps the best of the "
        "trained codes, the start and RTN by its output error on all calibration windows.")
    signround_start_offset: Literal["centre", "nearest"] = Field(
        "nearest", description="SignRound from a solver (signround_start): where each weight starts inside its "
        "solver code's rounding interval: at the point nearest its own W / s (where the solver kept RTN's code, "
        "as from RTN; elsewhere just inside the interval's edge, so training can return it to RTN's code "
        "cheaply), or at its centre (every code equally hard to leave: 200 steps barely move it; from QuantEase "
        "at int3 g128 asym 39.00 against nearest's 34.63 on WikiText-2).")

    # End-to-end scale tuning after any algorithm (quant_core/algorithms/scale_tuning.py; EfficientQAT's E2E-QP).
    scale_tuning_steps: int | None = Field(None, ge=0, le=100_000, description="Scale tuning: Adam steps that train "
                                           "every quantized linear's group scales through the whole model after the "
                                           "algorithm, codes and zero points frozen, one mini-batch of calibration "
                                           "windows a step (0: off; needs calibration data, also after RTN; the model "
                                           "must fit on the calibration device whole). None (the default): 128 where "
                                           "a calibrated algorithm runs on a CUDA GPU with room for it, else 0 "
                                           "(quant_core/scale_tuning_auto.py); the saved config records the count.")
    scale_tuning_lr: float = Field(1e-3, gt=0, le=1, description="Scale tuning: Adam's learning rate on each "
                                   "scale's log (so a step moves a scale by about this fraction, whatever its "
                                   "size), decaying to 0 on a cosine; EfficientQAT's 1e-5 on raw int3/int4 step "
                                   "sizes of about 0.01 is about 1e-3 of each.")
    scale_tuning_batch_windows: int = Field(8, gt=0, le=MAX_COUNT, description="Scale tuning: calibration "
                                            "windows per step (taken from one calibration batch, so at most "
                                            "calibration_batch_size).")
    scale_tuning_objective: Literal["kl", "ce"] = Field(
        "kl", description="Scale tuning: what the steps lower: the KL divergence from the float model's "
        "next-token distributions on the calibration windows (distillation), or the cross-entropy of the "
        "windows' own next tokens.")
