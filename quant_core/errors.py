"""The package's exceptions, in one place and one hierarchy.

Every error quantllm raises on purpose is a ``QuantllmError``; each also subclasses the
built-in type callers already catch for that kind of problem (``ValueError`` for bad input,
``FileNotFoundError`` for a missing source, ``RuntimeError`` for a kernel that cannot run),
so ``except ValueError`` keeps working. The CLI prints any ``QuantllmError`` as one line.
This module imports nothing of the project, so every layer may raise these.
"""
from __future__ import annotations


class QuantllmError(Exception):
    """Base of every error quantllm raises on purpose; its message says what to do."""


class ConfigError(QuantllmError, ValueError):
    """A quantization or generation setting is invalid, or a combination no path can run."""


class UnknownSettingError(ConfigError, TypeError):
    """A keyword names no setting (a typo?); also a TypeError, as Python's unexpected keyword is."""


class SettingTypeError(ConfigError, TypeError):
    """A setting has the wrong type (a bool or a string where a number goes); also a TypeError."""


class CalibrationError(QuantllmError, ValueError):
    """Calibration data is missing, unreadable or too small."""


class EvaluationError(QuantllmError, ValueError):
    """An evaluation text cannot be used, or the model's outputs on it are not finite."""


class UnsupportedModelError(QuantllmError, ValueError):
    """The model's architecture is not one an algorithm or decode path knows."""


class CheckpointError(QuantllmError, ValueError):
    """A saved or imported checkpoint is corrupt, truncated, tampered with or inconsistent."""


class ExportError(QuantllmError, ValueError):
    """The model uses a setting the export target cannot represent."""


class SourceNotFoundError(QuantllmError, FileNotFoundError):
    """A model, calibration or evaluation source does not exist or cannot be reached."""


class NoKernelError(QuantllmError, RuntimeError):
    """No kernel (or not the forced one) can run a layer; the message lists every reason."""


class BuildError(QuantllmError, RuntimeError):
    """A native kernel could not be compiled on this machine."""


class OutputExistsError(QuantllmError, FileExistsError):
    """An output path exists and may not be replaced (no overwrite, or it is not ours to replace)."""


class MissingExtraError(QuantllmError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""
