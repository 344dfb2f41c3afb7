"""``quantllm``: quantize, generate, evaluate and inspect models from the command line."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import QuantllmError  # imports nothing else: --help stays fast
# Each command imports what it uses inside its function, for the same reason: `quantllm --help`
# and argument errors answer without importing torch and transformers (seconds on a cold start).

EPILOG = """examples:
  quantllm quantize --weight-dtype int4 --group-size 64 --scheme asym -o out/smollm2-int4
  quantllm generate out/smollm2-int4 "What is the capital of France?" --max-new-tokens 32
  quantllm generate "What is the capital of France?"          # the embedded float model
  quantllm eval out/smollm2-int4 --text ../shared/data/wikitext2-test.txt
  quantllm eval --text ../shared/data/wikitext2-test.txt      # the float baseline
  quantllm info out/smollm2-int4
MODEL is a Hugging Face id or directory, a .gguf file, or a directory saved by quantllm;
left out (every command), it is the embedded SmolLM2-135M-Instruct, in float."""
MODEL_HELP = "model (hub id, directory, .gguf file, quantllm-saved directory); default: the embedded SmolLM2-135M-Instruct"
DEVICE_HELP = "cpu | cuda | cuda:N (default cpu)"
DEBUG_HELP = "on an error, show the full traceback instead of one line"


def _parse_option(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantllm", description="Weight-only quantization of LLMs.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quantize", help="quantize a model and save it", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("model", nargs="?", help=MODEL_HELP)
    q.add_argument("-o", "--output", required=True, help="directory to write (must not exist unless --overwrite)")
    q.add_argument("--algorithm", default="rtn", help="rtn | gptq | awq | teq | quantease | gptq_quantease | signround (default: rtn)")
    q.add_argument("--weight-dtype", default="int4_fullrange",
                   help="int8, int4_clip, int4_fullrange (int4), nf4, fp4_e2m1 (fp4), int3, int2")
    q.add_argument("--group-size", type=int, default=128, help="columns per scale; -1 = per channel (default 128)")
    q.add_argument("--scheme", default="sym", help="sym | asym (default sym)")
    q.add_argument("--compute-dtype", default="auto", help="auto | fp32 | bf16 | fp16 | int8")
    q.add_argument("--scale-dtype", default="fp16", help="fp16 | bf16 | fp32 (default fp16)")
    q.add_argument("--mse-clip", action="store_true", default=None,
                   help="search per-group clipping ratios (RTN, GPTQ; default: on for GPTQ at 3 bits and below, "
                        "else off; --option mse_clip=false turns it off)")
    q.add_argument("--keep-float", nargs="*", default=["lm_head"], metavar="NAME",
                   help="linear layers (name substrings) left in float (default: lm_head)")
    q.add_argument("--option", type=_parse_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any other QuantConfig field, e.g. --option n_samples=64 (repeatable)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory, if it is an empty folder or a quantllm checkpoint")

    add_generate_parser(sub)

    e = sub.add_parser("eval", help="perplexity on a text file (windows of --seqlen tokens)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", nargs="?", help=MODEL_HELP)
    e.add_argument("--text", required=True, help="text file, e.g. ../shared/data/wikitext2-test.txt")
    e.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    e.add_argument("--windows", type=int, default=32, help="how many windows (0 = all; default 32)")
    e.add_argument("--device", default="cpu", help=DEVICE_HELP)
    _add_no_verify(e)

    i = sub.add_parser("info", help="quantization config, sizes, and the kernel chosen per layer")
    i.add_argument("model", nargs="?", help=MODEL_HELP)
    i.add_argument("--device", default="cpu", help="device to choose kernels for: " + DEVICE_HELP)
    _add_no_verify(i)

    x = sub.add_parser("export", help="write a quantized model for vLLM / transformers (gptq, awq) or llama.cpp (gguf)")
    x.add_argument("model", nargs="?", help="a quantllm-saved directory (or a GPTQ/AWQ directory, or FILE.gguf#packed); "
                                            "default: the embedded model, which is float and so has nothing to export")
    x.add_argument("--to", required=True, choices=["gptq", "awq", "gguf"], help="target format")
    x.add_argument("-o", "--output", required=True, help="directory to write (gptq, awq) or .gguf file (gguf)")
    x.add_argument("--checkpoint-format", default="gptq", help="gptq: gptq (v1, what vLLM reads) | gptq_v2")
    x.add_argument("--tokenizer-pre", default="default",
                   help="gguf: llama.cpp pre-tokenizer name, e.g. smollm for SmolLM2 (default: default)")
    x.add_argument("--overwrite", action="store_true",
                   help="replace an existing output: an empty folder or a quantllm/GPTQ/AWQ checkpoint written by "
                        "quantllm (gptq, awq), or a GGUF file (gguf)")
    _add_no_verify(x)
    for command in sub.choices.values():  # --debug goes before or after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def _add_no_verify(parser) -> None:
    parser.add_argument("--no-verify", action="store_true",
                        help="load a quantllm checkpoint without checking its checksums (every other check still runs)")


def add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="answer a prompt (chat template applied when the model has one)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("model", nargs="?", help=MODEL_HELP)
    g.add_argument("prompt", help="the prompt: the user's message, or with --raw the exact text to continue")
    g.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the same answer every time (default)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="sampling: keep the likeliest tokens whose probabilities add up to P (default 1.0 = all)")
    g.add_argument("--top-k", type=int, default=0, help="sampling: keep the K likeliest tokens (default 0 = all)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="penalty on tokens already in the text (default 1.0 = none)")
    g.add_argument("--seed", type=int, default=None, help="sampling: seed, for the same answer again (default random)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the answer before TEXT (repeatable)")
    g.add_argument("--system", default=None, help="system message, put before the prompt by the chat template")
    stream = g.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=None,
                        help="print the answer as it is generated (the default when output is a terminal)")
    stream.add_argument("--no-stream", dest="stream", action="store_false",
                        help="print the answer once it is complete (the default when output is a file or pipe)")
    g.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    g.add_argument("--device", default="cpu", help=DEVICE_HELP)
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: the physical cores); $QUANTLLM_DECODE_STEP=transformers decodes "
                        "through transformers' modules instead of the lean CPU step")
    _add_no_verify(g)


def cmd_quantize(args) -> int:
    from pathlib import Path

    from .checkpoint_io import check_output
    from .cli_checks import quant_config_from_args
    from .loading import load_model
    from .quantize import quantize
    from .serialization import save_quantized

    config = quant_config_from_args(args)  # settings and calibration file, before loading anything
    check_output(Path(args.output), args.overwrite)  # before loading or quantizing anything
    model, tokenizer = load_model(args.model)
    start = time.perf_counter()
    quantize(model, config, tokenizer=tokenizer)  # calibrated algorithms tokenize their calibration text
    elapsed = time.perf_counter() - start
    save_quantized(model, tokenizer, args.output, overwrite=args.overwrite)
    print(f"quantized in {elapsed:.1f} s; saved to {args.output}")
    return 0


def cmd_generate(args) -> int:
    from .cli_generate import run_generate
    return run_generate(args)


def cmd_eval(args) -> int:
    from .cli_checks import check_device
    from .evaluation import check_window_args, read_eval_text, windows, windows_perplexity
    from .loading import load_model

    check_window_args(args.seqlen, args.windows, ("--seqlen", "--windows"))  # all before the model loads
    device, text = check_device(args.device), read_eval_text(args.text)
    model, tokenizer = load_model(args.model, device=device, verify=not args.no_verify)
    batches = windows(tokenizer, text, args.seqlen, args.windows or None)
    ppl = windows_perplexity(model, batches)
    if args.windows and len(batches) < args.windows:
        print(f"quantllm eval: note: the text has {len(batches)} windows of {args.seqlen} tokens, "
              f"not the {args.windows} asked for", file=sys.stderr)
    print(f"perplexity: {ppl:.3f} ({len(batches)} windows of {args.seqlen} tokens)")
    return 0


def cmd_info(args) -> int:
    from .cli_checks import check_device
    from .inspect import describe
    from .loading import load_model

    device = check_device(args.device)
    model, _ = load_model(args.model, verify=not args.no_verify)
    print(describe(model, device))
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from .checkpoint_io import EXPORT_REPLACEABLE, check_output
    from .interop import export
    from .interop.gguf_export import check_gguf_output
    from .loading import load_model
    from .modules import QuantLinear

    if args.to == "gguf":  # before loading anything
        check_gguf_output(Path(args.output), args.overwrite)
    else:
        check_output(Path(args.output), args.overwrite, EXPORT_REPLACEABLE)
    model, tokenizer = load_model(args.model, verify=not args.no_verify)
    if not any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError(f"{args.model or 'the embedded model'} is a float model: nothing to export. Quantize it "
                         f"first (quantllm quantize {args.model or ''} -o DIR ...) and export DIR")
    options = ({"checkpoint_format": args.checkpoint_format} if args.to == "gptq" else
               {"tokenizer_pre": args.tokenizer_pre} if args.to == "gguf" else {})
    start = time.perf_counter()
    out = export(model, tokenizer, args.output, args.to, overwrite=args.overwrite, **options)
    print(f"exported to {args.to} in {time.perf_counter() - start:.1f} s: {out}")
    return 0


COMMANDS = {"quantize": cmd_quantize, "generate": cmd_generate, "eval": cmd_eval, "info": cmd_info,
            "export": cmd_export}


# Errors that describe the user's input, files or machine (every QuantllmError says what to do): exit 2.
# Anything else is a bug of ours: one line too, exit 1, and --debug shows where it happened.
INPUT_ERRORS = (QuantllmError, ValueError, OSError, NotImplementedError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"quantllm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error reaches the user as one line
        if args.debug:
            raise
        print(f"quantllm {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, INPUT_ERRORS) else 1


def error_line(exc: Exception) -> str:
    """``exc`` as one line: its message's lines joined; an unexpected error names its type and --debug."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = ""
    for line in lines:
        text += ("" if not text else " " if text.endswith(":") else "; ") + line
    if isinstance(exc, INPUT_ERRORS) and text:
        return text
    return (f"{type(exc).__name__}: {text or 'no message'} (unexpected: rerun with --debug for the traceback, "
            f"and please report it)")


if __name__ == "__main__":
    sys.exit(main())
