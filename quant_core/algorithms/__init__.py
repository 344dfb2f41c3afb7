"""Quantization algorithms. Each turns float weights (plus calibration statistics) into
codes and quantization parameters (``QuantResult``); none of them packs."""
