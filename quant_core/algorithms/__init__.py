"""Quantization algorithms. Each turns float weights (plus calibration statistics) into
codes and quantization parameters (``QuantResult``); none of them packs. Importing this
package registers every algorithm with ``quant_core.quantize``."""
from . import awq, gptq, quantease, rtn, signround, teq  # noqa: F401  (each registers its handler on import)
