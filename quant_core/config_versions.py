"""The versions of a saved ``quantization_config``: what each added, and how an older dict reads today.

1: the first. 2: the AWQ and TEQ settings became fields. A version-1 dict lacks them and loads with their
defaults, which are the values version 1 ran with; a version-2 dict names them, so an older quantllm
refuses it as newer instead of failing on unknown fields.
3: QuantEase's settings (num_iter, outlier_fraction, outlier_structure); a version-3 checkpoint may hold
sparse outliers that an older quantllm could not execute.
4: head_weight_dtype (a quantized output head, int8 by default). A saved dict of an earlier version had a
float head, so it loads with None; a user's dict without a version gets today's defaults.
5: double quantization (double_quant, double_quant_block): such a checkpoint stores scale codes.
6: token_weighting and mlp_out_shrinkage (GPTQ/QuantEase calibration); earlier checkpoints had neither.
7: awq_scale_ridge and teq_scale_check (issue 16); earlier checkpoints ran with their off values, the defaults.
8: hessian_shrinkage (GPTQ, 0.5 by default); earlier GPTQ checkpoints were calibrated without it.
9: awq_hessian_shrinkage and teq_hessian_shrinkage; earlier checkpoints ran with their off values, the defaults.
10: teq_clip_search, and TEQ's defaults teq_clip_search=True, teq_scale_ridge=0.3 (issue 16: TEQ had been worse
than RTN out of domain); earlier TEQ checkpoints ran with neither.
11: SignRound's settings (signround_steps, signround_lr, signround_batch_windows, signround_target,
signround_token_weighting); an older quantllm would refuse them as unknown fields.
12: new defaults measured better on both texts in every column (issues 16, 19): AWQ's awq_scale_ridge 0.3 (AWQ had
been worse than RTN out of domain at int4 g128 sym) and SignRound's signround_target "float_model"; earlier AWQ
checkpoints ran with ridge 0 and earlier SignRound ones towards the float block. Also new: AWQ's awq_grid_step and
awq_parent_batch_choice (earlier checkpoints searched every ratio on all their recorded batches, which the
defaults 1 and "spread" reproduce).
13: SignRound's signround_start and signround_start_offset (learned rounding started from GPTQ's or QuantEase's
codes); an older quantllm would refuse them as unknown fields. The default start, RTN's, is the earlier behaviour.
14: scale tuning (scale_tuning_steps, scale_tuning_lr, scale_tuning_batch_windows, scale_tuning_objective); an
older quantllm would refuse them as unknown fields. Off (0 steps), the default, is the earlier behaviour; the
checkpoint layout is unchanged (tuned scales are stored as any scales). Since session 12 the field defaults to None
("auto": 128 steps where a calibrated algorithm runs on a CUDA GPU with room for it, else 0); a saved dict holds the
resolved count, so the version stays 14, and an earlier version's dict, which lacks the field, reads as 0.
15: AWQ's awq_parent_batches, awq_mlp_token_stride and awq_scale_ridge default to None, decided where AWQ
calibrates (quant_core/awq_search_auto.py: a CPU searches on fewer windows with a larger ridge); a saved AWQ
dict holds the resolved values. An earlier AWQ dict ran the all-window search (32 / 1 and its ridge, 0.3 since
version 12); an earlier dict of another algorithm recorded the then-defaults, which now read as None.
"""
from __future__ import annotations

from typing import Any

from .algorithm_settings import ALGORITHM_SETTINGS
from .errors import ConfigError

CONFIG_VERSION = 15
HEAD_FIELD_VERSION = 4
HESSIAN_FIELDS_VERSION = 6
HESSIAN_SHRINKAGE_VERSION = 8
TEQ_DEFAULTS_VERSION = 10
AWQ_SIGNROUND_DEFAULTS_VERSION = 12
SCALE_TUNING_VERSION = 14
AWQ_SEARCH_AUTO_VERSION = 15
AWQ_SEARCH_BEFORE = {"awq_parent_batches": 32, "awq_mlp_token_stride": 1, "awq_scale_ridge": 0.3}


def read_saved_version(data: dict[str, Any]) -> dict[str, Any]:
    """A saved dict as today's fields: refused if damaged or newer; the fields an older version lacked
    set to what that version ran with where today's default differs; the version set to today's."""
    version = data.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"quantization_config version {version!r} is not one quantllm writes (a whole "
                          f"number); the config.json is damaged: quantize and save the model again")
    if version > CONFIG_VERSION:
        raise ConfigError(f"quantization_config version {version} is newer than this quantllm "
                          f"understands ({CONFIG_VERSION}); upgrade quantllm")
    data = dict(data)
    if version < HEAD_FIELD_VERSION:  # saved before the field existed: the head stayed float
        data.setdefault("head_weight_dtype", None)
    if version < HESSIAN_FIELDS_VERSION and "token_weighting" in ALGORITHM_SETTINGS.get(data.get("algorithm"), ()):
        data.setdefault("token_weighting", False)  # calibrated with the plain Hessians
        data.setdefault("mlp_out_shrinkage", 0.0)
    if version < HESSIAN_SHRINKAGE_VERSION and data.get("algorithm") == "gptq":
        data.setdefault("hessian_shrinkage", 0.0)  # calibrated before the field existed
    if version < TEQ_DEFAULTS_VERSION and data.get("algorithm") == "teq":
        data.setdefault("teq_clip_search", False)  # calibrated with the earlier defaults
        data.setdefault("teq_scale_ridge", 0.0)
    if version < AWQ_SIGNROUND_DEFAULTS_VERSION and data.get("algorithm") == "awq":
        data.setdefault("awq_scale_ridge", 0.0)
    if version < AWQ_SIGNROUND_DEFAULTS_VERSION and data.get("algorithm") == "signround":
        data.setdefault("signround_target", "float_block")
    if version < SCALE_TUNING_VERSION:
        data.setdefault("scale_tuning_steps", 0)  # ran without; today's default (None) would read as "auto"
    if version < AWQ_SEARCH_AUTO_VERSION:
        for name, before in AWQ_SEARCH_BEFORE.items():
            if data.get("algorithm") == "awq":
                data.setdefault(name, before)  # the search it ran (ridge 0 before version 12: set above)
            else:  # another algorithm's dict recorded the then-defaults, unused (any other value was refused)
                data.pop(name, None)
    return {**data, "version": CONFIG_VERSION}  # older versions only lack fields
