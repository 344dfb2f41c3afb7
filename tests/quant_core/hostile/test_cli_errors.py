"""Issue 17 parts 3-4 through the CLI: every mistake is one line saying what to do and a non-zero exit,
refused before the model loads when the input can be checked without it; --debug shows the traceback."""
import json
from pathlib import Path

import pytest
import torch

import quant_core.cli_generate as cli_generate
import quant_core.loading as loading
from quant_core import cli

LOADERS = (loading, cli_generate)

TEXT = "hello world, this is a short evaluation text.\n" * 20  # 238 tokens of SmolLM2's tokenizer


class ModelLoaded(BaseException):
    """Raised by the patched loader: not an Exception, so no handler of the CLI can swallow it."""


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded("the model was loaded before the input was checked")
    for module in LOADERS:  # cli_generate holds its own name for it
        monkeypatch.setattr(module, "load_model", refuse)


@pytest.fixture
def files(tmp_path):
    text, empty, binary = tmp_path / "text.txt", tmp_path / "empty.txt", tmp_path / "binary.txt"
    text.write_text(TEXT)
    empty.write_text(" \n\n")
    binary.write_bytes(bytes(range(256)) * 64)
    return {"text": str(text), "empty": str(empty), "binary": str(binary), "missing": str(tmp_path / "no.txt"),
            "out": str(tmp_path / "out")}


def one_line_error(argv, capsys, rc=2) -> str:
    assert cli.main(argv) == rc
    err = capsys.readouterr().err  # progress bars of model loading may come first
    lines = [line for line in err.splitlines() if line.startswith("quantllm ")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--seqlen", "0"], "--seqlen"),
    (["--seqlen", "-5"], "--seqlen"),
    (["--seqlen", "1"], "--seqlen"),  # printed perplexity: nan with exit code 0
    (["--windows", "-1"], "--windows"),
    (["--device", "bogus"], "bogus"),
    (["--device", "cuda:x"], "cuda:x"),
    (["--device", "cuda"], "CUDA"),  # this machine has none (the GPU runs skip the case)
])
def test_eval_arguments_are_checked_before_loading(args, message, files, no_load, capsys):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert message in one_line_error(["eval", "m", "--text", files["text"], *args], capsys)


@pytest.mark.parametrize("which, message", [("missing", "does not exist"), ("empty", "empty"),
                                            ("binary", "UTF-8")])
def test_eval_text_is_checked_before_loading(which, message, files, no_load, capsys):
    assert message in one_line_error(["eval", "m", "--text", files[which]], capsys)


@pytest.mark.parametrize("argv, message", [
    (["generate", "m", "hi", "--device", "bogus"], "bogus"),
    (["generate", "m", "hi", "--temperature", "nan"], "temperature"),
    (["generate", "m", "hi", "--max-new-tokens", "0"], "max_new_tokens"),
    (["info", "m", "--device", "bogus"], "bogus"),
])
def test_generate_and_info_arguments_are_checked_before_loading(argv, message, no_load, capsys):
    assert message in one_line_error(argv, capsys)


@pytest.mark.parametrize("options, message", [
    (["--option", "version=99"], "version"),
    (["--option", "kernel=bogus"], "reference"),
    (["--group-size", "1000000000"], "group_size"),
    (["--keep-float", ""], "empty"),
    (["--weight-dtype", "int8", "--option", "weight_dtype=nf4"], "--weight-dtype"),
    (["--algorithm", "gptq", "--option", "calibration_dataset=MISSING"], "does not exist"),
    (["--algorithm", "awq", "--option", "calibration_dataset=EMPTY"], "empty"),
    (["--algorithm", "teq", "--option", "calibration_dataset=BINARY"], "UTF-8"),
])
def test_quantize_settings_are_checked_before_loading(options, message, files, no_load, capsys):
    options = [o.replace("MISSING", files["missing"]).replace("EMPTY", files["empty"])
               .replace("BINARY", files["binary"]) for o in options]
    assert message in one_line_error(["quantize", "m", "-o", files["out"], *options], capsys)


def test_option_may_set_a_field_that_has_its_own_flag(tiny_hf_dir, files):
    assert cli.main(["quantize", str(tiny_hf_dir), "-o", files["out"], "--group-size", "32",
                     "--option", "weight_dtype=nf4"]) == 0  # was a TypeError (keyword given twice)
    saved = json.loads((Path(files["out"]) / "config.json").read_text())["quantization_config"]
    assert saved["weight_dtype"] == "nf4"


def test_a_group_wider_than_a_layer_is_refused_before_writing(tiny_hf_dir, files, capsys):
    err = one_line_error(["quantize", str(tiny_hf_dir), "-o", files["out"], "--group-size", "4096"], capsys)
    assert "64 input columns" in err and not Path(files["out"]).exists()


def test_eval_reports_the_windows_it_ran(tiny_hf_dir, files, capsys):
    argv = ["eval", str(tiny_hf_dir), "--text", files["text"], "--seqlen", "100"]
    assert cli.main(argv + ["--windows", "500"]) == 0  # reported "500 windows" for a 2-window text
    captured = capsys.readouterr()
    assert "(2 windows of 100 tokens)" in captured.out and "500" in captured.err
    assert cli.main(argv + ["--windows", "0"]) == 0
    assert "(2 windows of 100 tokens)" in capsys.readouterr().out


def test_eval_windows_longer_than_the_context_are_refused(tiny_hf_dir, files, capsys):
    long_text = Path(files["text"])
    long_text.write_text(TEXT * 3)  # 714 tokens: two windows of 300 but the model has 256 positions
    assert "256" in one_line_error(["eval", str(tiny_hf_dir), "--text", files["text"], "--seqlen", "300"], capsys)


def test_an_unexpected_error_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    def broken(args):
        raise KeyError("quantization_config")
    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    err = one_line_error(["info", "m"], capsys, rc=1)
    assert "KeyError" in err and "--debug" in err
    for argv in (["--debug", "info", "m"], ["info", "m", "--debug"]):
        with pytest.raises(KeyError):
            cli.main(argv)


def test_a_message_of_several_lines_is_printed_as_one(monkeypatch, capsys):
    from quant_core.errors import NoKernelError

    def refused(args):
        raise NoKernelError("no kernel can run layer q_proj:\n  cuda: no GPU\n  reference: disabled")
    monkeypatch.setitem(cli.COMMANDS, "info", refused)
    assert "cuda: no GPU" in one_line_error(["info", "m"], capsys)
