"""release_freed_memory hands pages that glibc kept after tensors were freed back to the OS."""
import pytest
import torch

from quant_core import freed_memory
from quant_core.freed_memory import release_freed_memory


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(freed_memory._libc is None, reason="needs glibc's malloc_trim (Linux)")
def test_freed_heap_tensors_leave_the_resident_set():
    big = torch.ones(16 << 20, dtype=torch.uint8)
    del big  # freeing an mmapped 16 MB raises glibc's mmap threshold above the chunks below
    chunks = [torch.ones(4 << 20, dtype=torch.uint8) for _ in range(64)]  # 256 MB, now from the heap, touched
    keep = chunks[-1]  # a live chunk at the heap's top: the freed pages lie below it
    del chunks
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > (128 << 20)  # most of the 252 MB freed came back
    assert keep.sum().item() == 4 << 20  # what is live is untouched

