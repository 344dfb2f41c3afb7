"""The one check both decoders make before a prefill: the batch they were built for, room in the cache."""
from __future__ import annotations


def check_prompt(shape, batch_size: int, max_len: int) -> None:
    b, t = shape
    if b != batch_size:
        raise ValueError(f"this decoder was built for batch {batch_size}, got {b}")
    if t >= max_len:
        raise ValueError(f"prompt of {t} tokens leaves no room in a cache of {max_len}; raise max_len")
