"""Per-layer solvers run on one CPU thread and give the thread count back, even on failure."""
import pytest
import torch

from quant_core.algorithms.threads import one_thread


def test_one_thread_inside_and_the_count_restored_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("solver failed")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
