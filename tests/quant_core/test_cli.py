import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quant_core.cli import main


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
