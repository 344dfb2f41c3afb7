"""--overwrite replaces only what is ours; export never deletes without it; stale staging
directories of killed saves are cleaned, and only ours (issue 17, part 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quant_core.cli import main
from quant_core.errors import OutputExistsError
from quant_core.interop import export
from quant_core.safe_write import STAGING_MARKER
from quant_core.serialization import load_quantized, save_quantized

from hostile_helpers import logits_of


@pytest.fixture(scope="module")
def model(saved_ckpt):
    return load_quantized(saved_ckpt[0])[0]


def _thesis_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    return folder


def test_overwrite_refuses_a_folder_that_is_not_a_checkpoint(model, tmp_path):
    folder = _thesis_dir(tmp_path)
    with pytest.raises(OutputExistsError, match="not a quantllm checkpoint.*thesis.txt"):
        save_quantized(model, None, folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "four years of work"


def test_overwrite_refuses_a_checkpoint_holding_other_files(model, saved_ckpt, tmp_path):
    import shutil
    folder = shutil.copytree(saved_ckpt[0], tmp_path / "q")
    (folder / "notes.md").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.md"):
        save_quantized(model, None, folder, overwrite=True)
    assert (folder / "notes.md").exists()


def test_overwrite_replaces_a_quantllm_checkpoint_and_an_empty_folder(model, saved_ckpt, tmp_path):
    import shutil
    folder = shutil.copytree(saved_ckpt[0], tmp_path / "q")
    save_quantized(model, None, folder, overwrite=True)
    assert not (folder / "tokenizer.json").exists()  # replaced whole: the new save has no tokenizer
    (tmp_path / "empty").mkdir()
    save_quantized(model, None, tmp_path / "empty", overwrite=True)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_links_and_files_are_never_replaced(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="a file"):
        save_quantized(model, None, tmp_path / "file", overwrite=True)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(OutputExistsError, match="a link"):
        save_quantized(model, None, tmp_path / "link", overwrite=True)


def test_cli_quantize_overwrite_refuses_before_loading(tmp_path, capsys):
    folder = _thesis_dir(tmp_path)
    # the model does not exist: a refusal that came after loading would name it
    code = main(["quantize", str(tmp_path / "no-such-model"), "-o", str(folder), "--overwrite"])
    assert code != 0 and "thesis.txt" in capsys.readouterr().err
    assert (folder / "thesis.txt").exists()


@pytest.mark.parametrize("to", ["gptq", "awq"])
def test_export_never_deletes_an_existing_folder_without_overwrite(model, tmp_path, to):
    folder = _thesis_dir(tmp_path)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export(model, None, folder, to)
    assert (folder / "thesis.txt").exists()
    with pytest.raises(OutputExistsError, match="thesis.txt"):
        export(model, None, folder, to, overwrite=True)
    assert (folder / "thesis.txt").exists()


def test_export_overwrite_replaces_our_own_export_only(model, saved_ckpt, tmp_path):
    first = export(model, None, tmp_path / "gptq", "gptq")
    export(model, None, first, "awq", overwrite=True)  # an export of ours: replaced
    assert json.loads((first / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    export(model, None, first, "gptq", overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    with pytest.raises(OutputExistsError, match="not a .*checkpoint written by quantllm"):
        export(model, None, foreign, "gptq", overwrite=True)


def test_cli_export_has_overwrite(saved_ckpt, tmp_path, capsys):
    out = tmp_path / "awq"
    assert main(["export", str(saved_ckpt[0]), "--to", "awq", "-o", str(out)]) == 0
    assert main(["export", str(saved_ckpt[0]), "--to", "awq", "-o", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(saved_ckpt[0]), "--to", "awq", "-o", str(out), "--overwrite"]) == 0


def test_gguf_export_does_not_replace_other_files(model, tmp_path):
    target = tmp_path / "model.gguf"
    target.write_text("not a gguf")
    with pytest.raises(OutputExistsError):
        export(model, None, target, "gguf")
    with pytest.raises(OutputExistsError, match="not a GGUF"):
        export(model, None, target, "gguf", overwrite=True)
    assert target.read_text() == "not a gguf"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _staging(tmp_path, name, target="q", pid=None, marker=True):
    folder = tmp_path / name
    (folder / "new").mkdir(parents=True)
    (folder / "new" / "model.safetensors").write_bytes(b"x" * 100)
    if marker:
        (folder / STAGING_MARKER).write_text(json.dumps({"target": target, "pid": pid or _dead_pid()}))
    return folder


def test_next_save_cleans_only_our_stale_staging(model, tmp_path):
    ours = _staging(tmp_path, ".q.tmp-0badc0de")
    no_marker = _staging(tmp_path, ".q.tmp-12345678", marker=False)
    other_target = _staging(tmp_path, ".q.tmp-87654321", target="other")
    live = _staging(tmp_path, ".q.tmp-11111111", pid=os.getppid())  # a live writer: still writing
    user = tmp_path / ".q.old-backup"
    user.mkdir()
    save_quantized(model, None, tmp_path / "q")
    assert not ours.exists()
    assert no_marker.exists() and other_target.exists() and live.exists() and user.exists()
    loaded, _ = load_quantized(tmp_path / "q")
    assert loaded is not None and logits_of(loaded) is not None
