"""A save killed at any step leaves the old checkpoint (or the complete new one) loadable at
the target, and the next save cleans what the killed one left (issue 17, part 1).

Each kill is real: a forked child saves with ``safe_write._after_step`` replaced by a SIGKILL
of itself at one named step; the parent then inspects the directory."""
from __future__ import annotations

import os
import shutil
import signal

import pytest
import torch

from quant_core import QuantConfig, quantize, safe_write
from quant_core.loading import load_model
from quant_core.serialization import load_quantized, save_quantized
from quant_core.testing import tiny_llama_lm

from hostile_helpers import logits_of

STEPS_EXCHANGE = ["staging", "written", "installed", "done"]
STEPS_TWO_RENAMES = ["staging", "written", "parked", "installed", "done"]


@pytest.fixture(scope="module")
def new_model():
    """A model whose logits differ from the saved checkpoint's (another seed)."""
    return quantize(tiny_llama_lm(seed=1), QuantConfig(weight_dtype="int4", group_size=32), progress=False)


def _save_killed_at(step: str, model, target, exchange: bool) -> None:
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            if not exchange:
                safe_write.exchange = lambda a, b: False
            safe_write._after_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
            save_quantized(model, None, target, overwrite=True)
        finally:
            os._exit(3)  # reached only when the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child exited {status}"


def _leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.mark.parametrize("exchange,step", [(True, s) for s in STEPS_EXCHANGE] + [(False, s) for s in STEPS_TWO_RENAMES])
def test_killed_replace_keeps_a_loadable_checkpoint(saved_ckpt, new_model, tmp_path, exchange, step):
    if exchange and not safe_write.exchange(tmp_path, tmp_path):
        pytest.skip("this file system has no atomic exchange")
    old_path, old_ref = saved_ckpt
    target = shutil.copytree(old_path, tmp_path / "q")
    _save_killed_at(step, new_model, target, exchange)
    new_ref = logits_of(new_model)
    model, _ = load_model(target)  # loading a missing target first restores a parked checkpoint
    got = logits_of(model)
    replaced = step in ("installed", "done")
    assert torch.equal(got, new_ref if replaced else old_ref)
    save_quantized(new_model, None, tmp_path / "q", overwrite=True)  # the next save cleans up
    assert _leftovers(target) == []
    assert torch.equal(logits_of(load_quantized(target)[0]), new_ref)


def test_failed_rename_restores_the_old_checkpoint(saved_ckpt, new_model, tmp_path, monkeypatch):
    old_path, old_ref = saved_ckpt
    target = shutil.copytree(old_path, tmp_path / "q")
    monkeypatch.setattr(safe_write, "exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith("new"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(safe_write.os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        save_quantized(new_model, None, target, overwrite=True)
    monkeypatch.undo()
    assert torch.equal(logits_of(load_quantized(target)[0]), old_ref)
    assert _leftovers(target) == []


def test_killed_first_save_leaves_nothing_at_the_target(new_model, tmp_path):
    target = tmp_path / "fresh"
    _save_killed_at("written", new_model, target, exchange=True)
    assert not target.exists() and len(_leftovers(target)) == 1  # the staging dir, marked as ours
    save_quantized(new_model, None, target)
    assert _leftovers(target) == []
