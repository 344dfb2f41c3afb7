import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quant_core.cli import main
from quant_core.engine import GenerationEngine, GenerationOutput


def test_help_explains_commands():
    out = subprocess.run([sys.executable, "-m", "quant_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("quantize", "generate", "eval", "info", "embedded SmolLM2"):
        assert word in out.stdout
    entry = shutil.which("quantllm", path=str(Path(sys.executable).parent))
    assert entry, "the quantllm console script is installed"
    sub = subprocess.run([entry, "quantize", "--help"], capture_output=True, text=True)
    assert sub.returncode == 0 and "--weight-dtype" in sub.stdout and "--group-size" in sub.stdout


@pytest.fixture
def quantized_dir(tiny_hf_dir, tmp_path):
    out = tmp_path / "q"
    assert main(["quantize", str(tiny_hf_dir), "-o", str(out), "--weight-dtype", "nf4", "--group-size", "32"]) == 0
    return out


def test_quantize_then_info(quantized_dir, capsys):
    qc = json.loads((quantized_dir / "config.json").read_text())["quantization_config"]
    assert qc["weight_dtype"] == "nf4" and qc["group_size"] == 32
    assert main(["info", str(quantized_dir)]) == 0
    out = capsys.readouterr().out
    assert "q_proj x2" in out and "chosen" in out and "reference" in out


def test_eval_and_generate_run(quantized_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is a short evaluation text.\n" * 40)
    assert main(["eval", str(quantized_dir), "--text", str(text), "--seqlen", "32", "--windows", "2"]) == 0
    assert "perplexity:" in capsys.readouterr().out
    assert main(["generate", str(quantized_dir), "Hello", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")  # random weights: the text itself may be empty


def test_bad_input_exits_2_with_message(quantized_dir, tiny_hf_dir, capsys):
    assert main(["quantize", str(tiny_hf_dir), "-o", str(quantized_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["quantize", str(tiny_hf_dir), "-o", "unused", "--weight-dtype", "int5"]) == 2
    assert "valid choices" in capsys.readouterr().err


# ---- one grammar: every verb takes no MODEL to mean the embedded one; every flag explained ----
def subparsers():
    import argparse

    from quant_core.cli import build_parser
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_of_every_command_is_explained():
    import argparse
    for command, parser in subparsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"quantllm {command} {action.dest}: no help"


@pytest.mark.parametrize("argv", [
    ["quantize", "-o", "out"], ["generate", "Hello"], ["eval", "--text", "t.txt"], ["info"],
    ["export", "--to", "gptq", "-o", "out"]])
def test_every_command_takes_no_model_to_mean_the_embedded_one(argv):
    from quant_core.cli import build_parser
    args = build_parser().parse_args(argv)
    assert args.model is None
    if argv[0] == "generate":
        assert args.prompt == "Hello"
        assert build_parser().parse_args(["generate", "some/model", "Hello"]).model == "some/model"


@pytest.fixture
def recorded_generation(monkeypatch):
    """The engine's generate/stream calls, recorded (prompt text and params), answering 'Paris.'."""
    from quant_core.engine import GenerationEngine, GenerationOutput
    calls = []

    def generate(self, prompts, params=None):
        calls.append(("generate", prompts[0], params))
        return [GenerationOutput(" Paris.", 3, 2, "eos")]

    def stream(self, prompt, params=None):
        calls.append(("stream", prompt, params))
        yield from [" Par", "is."]

    monkeypatch.setattr(GenerationEngine, "generate", generate)
    monkeypatch.setattr(GenerationEngine, "stream", stream)
    return calls


def test_generate_flags_reach_the_engine(tiny_hf_dir, recorded_generation, capsys):
    assert main(["generate", str(tiny_hf_dir), "Hi", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5",
                 "--seed", "3", "--stop", "\n\n", "--repetition-penalty", "1.1", "--system", "Be brief.",
                 "--max-new-tokens", "7"]) == 0
    kind, prompt, params = recorded_generation[-1]
    assert kind == "generate"  # output is not a terminal: not streamed unless asked
    assert (params.temperature, params.top_p, params.top_k, params.seed, params.stop, params.max_new_tokens,
            params.repetition_penalty) == (0.7, 0.9, 5, 3, ["\n\n"], 7, 1.1)
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt and "<|im_start|>user\nHi<|im_end|>" in prompt
    assert capsys.readouterr().out == "Paris.\n"
    assert main(["generate", str(tiny_hf_dir), "Hi", "--raw"]) == 0
    assert recorded_generation[-1][1] == "Hi"  # --raw: the prompt as is


def test_generate_streams_on_request_and_on_a_terminal(tiny_hf_dir, recorded_generation, capsys, monkeypatch):
    assert main(["generate", str(tiny_hf_dir), "Hi", "--stream"]) == 0
    assert recorded_generation[-1][0] == "stream" and capsys.readouterr().out == "Paris.\n"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["generate", str(tiny_hf_dir), "Hi"]) == 0
    assert recorded_generation[-1][0] == "stream"
    assert main(["generate", str(tiny_hf_dir), "Hi", "--no-stream"]) == 0
    assert recorded_generation[-1][0] == "generate"


def test_generate_threads_reach_the_engine(tiny_hf_dir, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(GenerationEngine, "generate", lambda self, prompts, params=None: seen.append(self.n_threads)
                        or [GenerationOutput("ok", 1, 1, "length")])
    assert main(["generate", str(tiny_hf_dir), "Hi", "--threads", "1", "--no-stream"]) == 0
    assert seen == [1]
    assert main(["generate", "no/such-model", "Hi", "--threads", "0"]) == 2  # refused before loading
    assert "n_threads" in capsys.readouterr().err


def test_generate_refuses_contradictions_before_loading(capsys):
    assert main(["generate", "no/such-model", "Hi", "--raw", "--system", "x"]) == 2
    assert "--system goes through the chat template" in capsys.readouterr().err
    assert main(["generate", "no/such-model", "Hi", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_and_eval_without_a_model_use_the_embedded_float_model(tmp_path, capsys):
    assert main(["generate", "What is the capital of France?", "--max-new-tokens", "8", "--no-stream"]) == 0
    assert "Paris" in capsys.readouterr().out
    text = tmp_path / "t.txt"
    text.write_text("The capital of France is Paris. It lies on the Seine, in the north of the country.\n" * 20)
    assert main(["eval", "--text", str(text), "--seqlen", "32", "--windows", "2"]) == 0
    assert "perplexity:" in capsys.readouterr().out


def test_export_of_a_float_model_says_to_quantize_first(tiny_hf_dir, tmp_path, capsys):
    assert main(["export", str(tiny_hf_dir), "--to", "gptq", "-o", str(tmp_path / "x")]) == 2
    assert "float model: nothing to export" in capsys.readouterr().err


@pytest.mark.parametrize("extra,expected", [([], True), (["--option", "mse_clip=false"], False),
                                            (["--weight-dtype", "int4"], False)])
def test_quantize_leaves_gptqs_low_bit_clipping_to_the_config_unless_given(extra, expected):
    """--mse-clip left out must not pin mse_clip=False: GPTQ at 3 bits and below turns it on by default."""
    from quant_core.cli import build_parser
    from quant_core.cli_checks import quant_config_from_args
    argv = ["quantize", "-o", "out", "--algorithm", "gptq", "--weight-dtype", "int3", *extra]
    assert quant_config_from_args(build_parser().parse_args(argv)).mse_clip is expected
