"""The CLI's arguments checked before any model loads: devices, quantization settings, input files.

Imported only when a command runs, so ``quantllm --help`` stays fast.
"""
from __future__ import annotations

import torch

from .calibration import check_calibration_source
from .config import QuantConfig
from .errors import ConfigError

# quantize's flags and the QuantConfig fields they set; --option may set these too, unless the flag says otherwise
FLAG_FIELDS = {"algorithm": "--algorithm", "weight_dtype": "--weight-dtype", "group_size": "--group-size",
               "scheme": "--scheme", "compute_dtype": "--compute-dtype", "scale_dtype": "--scale-dtype",
               "mse_clip": "--mse-clip", "modules_to_not_convert": "--keep-float"}


def check_device(device: str) -> str:
    """``--device`` as a torch device string that can run here; ConfigError otherwise."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    return str(parsed)


def quant_config_from_args(args) -> QuantConfig:
    """quantize's flags and ``--option KEY=VALUE`` pairs -> a validated QuantConfig, its calibration
    file checked. An option may set a field that has a flag, unless the flag sets it otherwise."""
    # a flag left out (None: --mse-clip) leaves its field to QuantConfig, whose default may depend on others
    fields = {field: getattr(args, dest) for dest, field in _flag_dests().items() if getattr(args, dest) is not None}
    for key, value in args.option:
        flag = FLAG_FIELDS.get(key)
        if flag and key in fields and fields[key] != _default(key) and fields[key] != value:
            raise ConfigError(f"{flag} {_shown(fields[key])} and --option {key}={_shown(value)} disagree; "
                              f"give the setting once")
        fields[key] = value
    config = QuantConfig(**fields)
    check_calibration_source(config.calibration_dataset)
    return config


def _flag_dests() -> dict[str, str]:
    """argparse destination -> QuantConfig field (--keep-float fills modules_to_not_convert)."""
    return {("keep_float" if field == "modules_to_not_convert" else field): field for field in FLAG_FIELDS}


def _default(field: str):
    # the flags' defaults are QuantConfig's
    return QuantConfig.model_fields[field].get_default(call_default_factory=True)


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)
