"""quant_core: weight-only quantization of Hugging Face models (config → algorithm → format → kernel)."""
from . import algorithms  # noqa: F401  (registers every algorithm with quantize())
from .config import QuantConfig, WeightOnlyQuantConfig
from .formats import FORMATS, get_format
from .modules import QuantLinear
from .packed import PackedWeight
from .quantize import quantize
from . import interop, loading  # noqa: F401  (each registers the sources load_model reads)

__all__ = ["QuantConfig", "WeightOnlyQuantConfig", "FORMATS", "get_format", "QuantLinear",
           "PackedWeight", "quantize"]
