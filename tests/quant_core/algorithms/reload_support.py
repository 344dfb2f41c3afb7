"""Save a quantized model and load it back, for the algorithm tests that check a checkpoint reloads as it
ran (not a test module)."""
import torch

from quant_core.serialization import load_quantized, save_quantized


def reloaded_logits(model, path, x: torch.Tensor):
    """``model``'s logits on ``x``, those of its copy saved to ``path`` and loaded back, and that copy."""
    save_quantized(model, None, path)
    again, _ = load_quantized(path)
    with torch.no_grad():
        return model(x).logits, again(x).logits, again
