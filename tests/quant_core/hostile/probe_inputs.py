"""Issue 17 parts 3-4 as probes: bad configs, generation settings, CLI inputs and batch calls.

Run as a script (``python tests/quant_core/hostile/probe_inputs.py``) to count outcomes, each probe
classed as: clean (a quantllm error, or the CLI's one-line message and a non-zero exit, before any
model loads when the input could be checked first), late (clean, but only after the model loaded),
traceback (any other exception reaching the user) or silent (accepted, or a wrong result). The tests
next to it assert the same cases one by one; this script gives the before/after figures.
"""
from __future__ import annotations

import contextlib
import io
import math
import resource
import sys
import tempfile
from pathlib import Path

# One probe on an unfixed tree tries to allocate terabytes: let it fail instead of swapping the machine.
resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))

import torch  # noqa: E402

import quant_core.loading as loading  # noqa: E402
from quant_core import cli  # noqa: E402
from quant_core.config import QuantConfig  # noqa: E402
from quant_core.engine import GenerationEngine  # noqa: E402
from quant_core.engine_types import GenerationParams  # noqa: E402
from quant_core.errors import QuantllmError  # noqa: E402
from quant_core.testing import byte_tokenizer, tiny_llama_lm  # noqa: E402

try:  # the generate verb's own module, on trees that have one
    import quant_core.cli_generate as cli_generate  # noqa: E402
except ImportError:
    cli_generate = None

NAN, INF = math.nan, math.inf
CONFIG_PROBES = [dict(version=99), dict(version=1), dict(kernel="bogus"), dict(group_size=1_000_000_000),
                 dict(group_size=True), dict(n_samples=True), dict(seqlen=10 ** 9), dict(n_samples=10 ** 9),
                 dict(calibration_seed=-1), dict(calibration_seed=2 ** 70), dict(modules_to_not_convert=[""]),
                 dict(calibration_dataset=""), dict(algorithm="teq", teq_lr=INF), dict(algorithm="gptq",
                 block_size=True), dict(algorithm="awq", awq_n_grid=10 ** 9)]
GENERATION_PROBES = [dict(temperature=NAN), dict(temperature=INF), dict(temperature="0.7"),
                     dict(repetition_penalty=NAN), dict(repetition_penalty=INF), dict(top_p=NAN),
                     dict(top_k=2.5), dict(top_k=True), dict(max_new_tokens=True), dict(max_new_tokens=2.0),
                     dict(seed="abc"), dict(seed=1.5), dict(seed=True), dict(seed=-1), dict(seed=2 ** 70)]


def api_outcome(fn) -> str:
    try:
        fn()
    except QuantllmError:
        return "clean"
    except Exception:  # noqa: BLE001 - every other type is what the probe looks for
        return "traceback"
    return "silent"


class LoadCounter:
    """Counts model loads, so a refusal that came only after loading is seen as late."""

    def __init__(self):
        self.loads, self.real = 0, loading.load_model

    def __call__(self, *args, **kwargs):
        self.loads += 1
        return self.real(*args, **kwargs)


def cli_outcome(argv, must_not_load: bool = True, expect_in_out: str | None = None) -> str:
    """Run ``quantllm argv`` in-process; ``expect_in_out``: text a successful run must print."""
    counter = LoadCounter()
    loading.load_model = counter
    if cli_generate is not None:  # it holds its own name for the loader
        cli_generate.load_model = counter
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        rc = exc.code
    except BaseException:  # noqa: BLE001
        return "traceback"
    finally:
        loading.load_model = counter.real
        if cli_generate is not None:
            cli_generate.load_model = counter.real
    lines = [line for line in err.getvalue().splitlines() if "error" in line.lower()]
    if rc == 0:
        return "clean" if expect_in_out and expect_in_out in out.getvalue() else "silent"
    if "Traceback" in err.getvalue() or len(lines) != 1:
        return "traceback"
    return "late" if must_not_load and counter.loads else "clean"


def tiny_hf_dir(root: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    path = root / "tiny"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(loading.embedded_model_dir()).save_pretrained(path)
    return path


def cli_probes(root: Path) -> dict[str, str]:
    model = str(tiny_hf_dir(root))
    text = root / "text.txt"
    text.write_text("hello world, this is a short evaluation text.\n" * 60)  # 714 tokens: 7 windows of 100
    empty, binary = root / "empty.txt", root / "binary.txt"
    empty.write_text("")
    binary.write_bytes(bytes(range(256)) * 64)
    missing = str(root / "missing.txt")
    out = str(root / "out")
    ev = ["eval", model, "--text", str(text)]
    q = ["quantize", model, "-o", out, "--overwrite"]
    gptq = q + ["--algorithm", "gptq", "--option"]
    return {
        "eval --seqlen 0": cli_outcome(ev + ["--seqlen", "0"]),
        "eval --seqlen -5": cli_outcome(ev + ["--seqlen", "-5"]),
        "eval --seqlen 1": cli_outcome(ev + ["--seqlen", "1"]),
        "eval --seqlen 300 (context 256)": cli_outcome(ev + ["--seqlen", "300"], must_not_load=False),
        "eval --windows -1": cli_outcome(ev + ["--windows", "-1"]),
        "eval --windows 500 (7 in the text)": cli_outcome(ev + ["--seqlen", "100", "--windows", "500"],
                                                          expect_in_out="(7 windows"),
        "eval --device bogus": cli_outcome(ev + ["--device", "bogus"]),
        "eval --device cuda (no CUDA)": cli_outcome(ev + ["--device", "cuda"]),
        "generate --device bogus": cli_outcome(["generate", model, "hi", "--device", "bogus"]),
        "generate --device cuda (no CUDA)": cli_outcome(["generate", model, "hi", "--device", "cuda"]),
        "generate --temperature nan": cli_outcome(["generate", model, "hi", "--temperature", "nan"]),
        "generate --max-new-tokens 0": cli_outcome(["generate", model, "hi", "--max-new-tokens", "0"]),
        "eval --text missing": cli_outcome(["eval", model, "--text", missing]),
        "eval --text empty": cli_outcome(["eval", model, "--text", str(empty)]),
        "eval --text binary": cli_outcome(["eval", model, "--text", str(binary)]),
        "quantize gptq calibration missing": cli_outcome(gptq + [f"calibration_dataset={missing}"]),
        "quantize gptq calibration empty": cli_outcome(gptq + [f"calibration_dataset={empty}"]),
        "quantize gptq calibration binary": cli_outcome(gptq + [f"calibration_dataset={binary}"]),
        "quantize --option version=99": cli_outcome(q + ["--option", "version=99"]),
        "quantize --option kernel=bogus": cli_outcome(q + ["--option", "kernel=bogus"]),
        "quantize --group-size 1000000000": cli_outcome(q + ["--group-size", "1000000000"]),
        "quantize --group-size 4096 (layers of 64)": cli_outcome(q + ["--group-size", "4096"], must_not_load=False),
        "quantize --option weight_dtype=nf4": cli_outcome(q + ["--group-size", "32", "--option", "weight_dtype=nf4"],
                                                          expect_in_out="saved to"),
        "quantize --keep-float ''": cli_outcome(q + ["--keep-float", ""]),
    }


def batch_probes() -> dict[str, str]:
    from langchain_quant import QuantLLM
    engine = GenerationEngine(tiny_llama_lm(), byte_tokenizer())
    too_long = "x" * (engine.context_window + 10)
    llm = QuantLLM(engine=engine, pipeline_kwargs={"max_new_tokens": 3})

    def per_prompt(results) -> str:
        ok = isinstance(results[0], str) and isinstance(results[1], QuantllmError)
        return "clean" if ok else "silent"
    found = {"QuantLLM.batch([ok, too long], return_exceptions=True)":
             per_prompt(llm.batch(["Hello", too_long], return_exceptions=True))}
    found["QuantLlamaLLM.complete_batch([ok, too long], return_exceptions=True)"] = \
        llamaindex_probe(engine, too_long)
    return found


def llamaindex_probe(engine, too_long: str) -> str:
    from llamaindex_quant import QuantLlamaLLM
    llm = QuantLlamaLLM(engine=engine, max_new_tokens=3)
    try:
        results = llm.complete_batch(["Hello", too_long], return_exceptions=True)
    except Exception:  # noqa: BLE001
        return "silent"  # the good prompt got no answer
    ok = hasattr(results[0], "text") and isinstance(results[1], QuantllmError)
    return "clean" if ok else "silent"


def main() -> int:
    found = {f"QuantConfig({k}={v!r})": api_outcome(lambda kw=kw: QuantConfig(**kw))
             for kw in CONFIG_PROBES for k, v in kw.items() if k != "algorithm"}
    found.update({f"GenerationParams({k}={v!r})": api_outcome(lambda kw=kw: GenerationParams.from_kwargs(kw))
                  for kw in GENERATION_PROBES for k, v in kw.items()})
    with tempfile.TemporaryDirectory() as tmp:
        found.update(cli_probes(Path(tmp)))
    found.update(batch_probes())
    for name, outcome in found.items():
        print(f"{outcome:10s} {name}")
    counts = {k: sum(v == k for v in found.values()) for k in ("clean", "late", "traceback", "silent")}
    print(f"{len(found)} probes: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
