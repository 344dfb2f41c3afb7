"""Which QuantConfig fields belong to which algorithm (data only).

A setting that no chosen algorithm has is refused unless it is at its default (config.QuantConfig),
so a typo such as ``damp_percent`` with ``algorithm="awq"`` fails instead of being ignored.
"""
from __future__ import annotations

_HESSIAN = ("token_weighting", "mlp_out_shrinkage")
_GPTQ = ("damp_percent", "act_order", "static_groups", "true_sequential", "block_size", *_HESSIAN)

ALGORITHM_SETTINGS: dict[str, tuple[str, ...]] = {
    "rtn": (),
    "gptq": (*_GPTQ, "hessian_shrinkage"),
    "quantease": ("num_iter", "act_order", "true_sequential", "block_size", "outlier_fraction",
                  "outlier_structure", *_HESSIAN),
    "gptq_quantease": (*_GPTQ, "num_iter"),
    "awq": ("awq_n_grid", "awq_grid_step", "awq_clip_grid", "awq_clip_max_shrink", "awq_parent_batches",
            "awq_parent_batch_choice", "awq_mlp_token_stride", "awq_duo_scaling", "awq_scale_ridge",
            "awq_hessian_shrinkage"),
    "teq": ("teq_steps", "teq_lr", "teq_batch_tokens", "teq_keep_tokens", "teq_scale_ridge", "teq_scale_check",
            "teq_hessian_shrinkage", "teq_clip_search"),
    "signround": ("signround_steps", "signround_lr", "signround_batch_windows", "signround_target",
                  "signround_token_weighting", "signround_start",
                  "signround_start_offset"),
}
ALGORITHMS = tuple(ALGORITHM_SETTINGS)
