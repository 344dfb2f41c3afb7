"""CPU speed of quantized models against float, side by side in one run, with llama.cpp as anchor.

    python benchmarks/cpu_speed.py                 # everything (an hour or more on 2 cores)
    python benchmarks/cpu_speed.py --models smollm2 --rows fp32 int4_sym --repeats 3
    python benchmarks/cpu_speed.py --isa native avx2   # every model row again as on an AVX2-only CPU

The committed table, in four steps on a quiet machine (~75-80 min on 2 cores; steps 2-4 keep step 1's JSON):

    python benchmarks/cpu_speed.py --rows fp32 bf16 int8 int4_sym int4_asym nf4 int4_sym_bf16 int8_bf16 \
        nf4_bf16 int4_sym_head8 --no-split --no-bandwidth --no-langchain --dynamic-cache      # ~40 min
    python benchmarks/cpu_speed.py --merge --isa avx2 --rows fp32 bf16 int4_sym int4_sym_head8 --no-gemm \
        --no-split --no-bandwidth --no-langchain --no-llamacpp                               # ~15 min
    python benchmarks/cpu_speed.py --merge --models --no-gemm --no-llamacpp                  # split, GB/s, LangChain
    python benchmarks/cpu_speed.py --merge --models --no-gemm --no-split --no-bandwidth --no-langchain \
        --no-llamacpp --threads-sweep 1 2 --isa native avx2                                  # ~10 min

Every (model, row) runs in its own child process so that its peak RSS is its own; the
parent keeps the figures in benchmarks/results/cpu_speed.json (--merge adds rows to it) and
regenerates benchmarks/results/cpu_speed.md from it. Figures are medians
of --repeats runs. Models: the embedded SmolLM2-135M (real weights) and a synthetic 1.1B
Llama of TinyLlama's shape (random weights built in memory, never written to disk; the
quantized rows get random codes directly so no float copy ever exists). Decoding runs
through quant_core.decode.make_decoder (the lean step for these models; --decoder static
for transformers' modules). Also: the per-token time split of SmolLM2 int4 (transformers'
modules against the lean step), the kernels' GEMV GB/s against a plain read of memory
(AVX2 forced, and AVX-512 where present), and the LangChain-level comparison with LlamaCpp.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's quant_core
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules: report, cpu_speed_report
import report  # noqa: E402
from cpu_speed_report import NAME, write_report  # noqa: E402
from cpu_speed_threads import threads_sweep  # noqa: E402
from random_weights import random_packed  # noqa: E402

ROWS = {  # name -> QuantConfig kwargs (None: a float dtype); the output head stays float in these rows
    "fp32": None, "bf16": None,
    "int8": dict(weight_dtype="int8", group_size=-1, scheme="sym", head_weight_dtype=None),
    "int4_sym": dict(weight_dtype="int4", group_size=128, scheme="sym", head_weight_dtype=None),
    "int4_asym": dict(weight_dtype="int4", group_size=128, scheme="asym", head_weight_dtype=None),
    "nf4": dict(weight_dtype="nf4", group_size=64, scheme="sym", head_weight_dtype=None),
}
# The same formats run as a bf16 model (activations, norms, embeddings in bf16; packed weights
# untouched): on CPUs with bf16 units batched layers then use a bf16 GEMM (quant_core.modules)
ROWS.update({f"{name}_bf16": ROWS[name] for name in ("int8", "int4_sym", "int4_asym", "nf4")})
# The same formats with a quantized output head (and tied embedding): quant_core.output_head; int4_sym_head8
# is QuantConfig's default head (head_weight_dtype="int8"), int4_sym_head4 an int4 g32 head
HEADS = {"int4_sym_head8": ("int8", -1), "int4_sym_head4": ("int4", 32)}
ROWS.update({name: ROWS["int4_sym"] for name in HEADS})
# --isa avx2: children see an AVX2-only CPU: our kernels, PyTorch's own dispatch, and the float GEMM
# libraries (MKL for fp32, oneDNN for bf16), which ignore ATEN_CPU_CAPABILITY: without their own caps
# the float bf16 rows ran on AVX512-BF16 units an AVX2-only CPU lacks (measured 208 GFLOP/s one thread
# at M=384, 23 with ONEDNN_MAX_CPU_ISA=AVX2), so "the faster float" was not what such a CPU has
ISA_ENV = {"native": {}, "avx2": {"QUANTLLM_CPU_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2",
                                  "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
LEAN = {"auto": None, "lean": True, "static": False}  # --decoder -> make_decoder(lean=...)
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
GEMM_SHAPES = {"q_proj/o_proj": (2048, 2048), "k_proj/v_proj": (2048, 256), "gate/up_proj": (2048, 5632),
               "down_proj": (5632, 2048)}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------- model construction (child side)
def synthetic_llama(row):
    """TinyLlama-shaped model with random weights; quantized rows never hold float linear weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from quant_core.config import QuantConfig
    from quant_core.model_surgery import mark_quantized, quantizable_linears, replace_linear
    config = LlamaConfig(**TINYLLAMA)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")  # untouched pages: no RSS until written
    gen = torch.Generator().manual_seed(0)
    model.model.rotary_emb = LlamaRotaryEmbedding(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif ROWS[row] is None or not name.endswith("proj.weight"):
                p.normal_(0, 0.02, generator=gen)
        if ROWS[row] is not None:
            qc = QuantConfig(**ROWS[row])
            for name, lin in quantizable_linears(model, qc):
                packed = random_packed(qc.weight_dtype, lin.in_features, lin.out_features, qc.group_size, qc.sym, gen)
                replace_linear(model, name, packed, None, qc)
            mark_quantized(model, qc)
    return model.eval()


def build(model_name, row):
    import torch
    from quant_core.config import QuantConfig
    from quant_core.quantize import quantize
    if model_name == "tinyllama-1.1b":
        model = synthetic_llama(row)
    else:
        from quant_core.loading import load_model
        model, _ = load_model(None)
        if ROWS[row] is not None:
            quantize(model, QuantConfig(**ROWS[row]))
    if row in HEADS:
        from quant_core.output_head import quantize_head
        quantize_head(model, *HEADS[row])
    if row == "bf16" or row.endswith("_bf16"):
        model = model.to(torch.bfloat16)
    return model.eval()


def linear_weight_bytes(model):
    import torch
    from quant_core.modules import QuantLinear
    total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            total += mod.packed.nbytes()
        elif isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            total += mod.weight.numel() * mod.weight.element_size()
    return total


def peak_rss_reset():
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak (VmHWM) to the current RSS
        f.write("5")


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_model(args):
    import torch
    from quant_core.decode import greedy_generate, make_decoder
    torch.manual_seed(0)
    model = build(args.model, args.row)
    vocab = model.config.vocab_size
    out = {"weight_bytes": linear_weight_bytes(model)}
    prompt = torch.randint(100, vocab, (1, args.prefill_tokens))
    out["settings"] = {"prefill_tokens": args.prefill_tokens, "prompt_tokens": args.prompt_tokens,
                       "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads}
    with torch.inference_mode():
        model(input_ids=prompt[:, :8])  # first call repacks weights and builds kernels
        forward = args.prefill_tokens / median_time(lambda: model(input_ids=prompt, logits_to_keep=1), args.repeats)
        # what generation runs: the decoder's prefill (the lean one-call prompt where it fits); every row,
        # float or quantized, is credited with the faster of its two paths
        dec = make_decoder(model, 1, args.prefill_tokens + 1, lean=LEAN[args.decoder])
        dec.prefill(prompt[:, :8])
        engine = args.prefill_tokens / median_time(lambda: dec.prefill(prompt), args.repeats)
        out.update(prefill_forward_tok_s=forward, prefill_engine_tok_s=engine, prefill_tok_s=max(forward, engine))
    peak_rss_reset()
    for b in (int(x) for x in args.decode_batches.split(",")):
        ids = torch.randint(100, vocab, (b, args.prompt_tokens))
        dec = make_decoder(model, b, args.prompt_tokens + args.new_tokens, lean=LEAN[args.decoder])
        out["decoder"] = type(dec).__name__
        runs = [greedy_generate(model, ids, args.new_tokens, decoder=dec)[1] for _ in range(args.repeats)]
        out[f"decode_b{b}_tok_s"] = b * (args.new_tokens - 1) / statistics.median(r["decode_s"] for r in runs)
    out["peak_rss_decode_mb"] = peak_rss_mb()
    if args.dynamic_cache:
        ids = torch.randint(100, vocab, (1, args.prompt_tokens))
        runs = [greedy_generate(model, ids, args.new_tokens, static_cache=False)[1] for _ in range(args.repeats)]
        out["decode_b1_dynamic_tok_s"] = (args.new_tokens - 1) / statistics.median(r["decode_s"] for r in runs)
    kernels = {type(m._kernel).__name__ for m in model.modules() if getattr(m, "_kernel", None) is not None}
    out["kernels"] = sorted(kernels) or ["torch float"]
    return out


def child_gemm(args):
    """Per-layer GEMM times (ms) for the 1.1B shapes, rotating over enough copies to defeat the caches."""
    import torch
    from quant_core.config import QuantConfig
    from quant_core.modules import QuantLinear
    gen = torch.Generator().manual_seed(0)
    out = {}
    for shape_name, (k, n) in GEMM_SHAPES.items():
        for m in (1, 8, 128):
            x = torch.randn(m, k)
            for row in args.rows:
                if ROWS[row] is None:
                    dtype = torch.bfloat16 if row == "bf16" else torch.float32
                    layer_bytes = k * n * (2 if row == "bf16" else 4)
                    make = lambda: torch.nn.Linear(k, n, bias=False, dtype=dtype)  # noqa: E731
                    xin = x.to(dtype)
                else:
                    qc = QuantConfig(**ROWS[row])
                    layer_bytes = random_packed(qc.weight_dtype, k, n, qc.group_size, qc.sym, gen).nbytes()
                    make = lambda qc=qc: QuantLinear.from_packed(  # noqa: E731
                        random_packed(qc.weight_dtype, k, n, qc.group_size, qc.sym, gen), None, qc.compute_dtype)
                    xin = x
                copies = [make() for _ in range(max(2, -(-args.cache_bytes // layer_bytes)))]
                with torch.inference_mode():
                    for layer in copies:
                        layer(xin)
                    state = {"i": 0}

                    def one():
                        copies[state["i"] % len(copies)](xin)
                        state["i"] += 1
                    reps = max(3, min(len(copies), 20))
                    out[f"{shape_name}|{m}|{row}"] = median_time(one, reps) * 1e3
                copies.clear()  # free the layers before the next shape (the closure above still names the list)
    return out


def child_split(args):
    """Per-token split of SmolLM2 int4 decode, transformers' modules against the lean step."""
    import torch
    from cpu_speed_split import decode_split
    out = {}
    for row in ("int4_sym", "int4_sym_head8"):
        model = build("smollm2", row)
        prompt = torch.randint(100, model.config.vocab_size, (1, args.prompt_tokens),
                               generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            model(input_ids=prompt[:, :8])
        for name, lean in (("static", False), ("lean", True)):
            out[f"{row}|{name}"] = decode_split(model, prompt, args.new_tokens, args.repeats, lean)
    return out


def child_llamacpp(args):
    from llama_cpp import Llama
    from quant_core.loading import embedded_model_path
    llm = Llama(model_path=str(embedded_model_path()), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=512, verbose=False)
    prompt = list(range(100, 228))
    rates = []
    for _ in range(args.repeats):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            llm.eval([llm.sample(temp=0.0)])
        rates.append((args.new_tokens - 1) / (time.perf_counter() - t))
    import llama_cpp
    return {"decode_b1_tok_s": statistics.median(rates), "version": llama_cpp.__version__}


# ---------------------------------------------------------------- parent: run children, print table
def run_child(kind, args, new_tokens=None, prefill_tokens=None, prompt_tokens=None, isa="native", **extra):
    cmd = [sys.executable, __file__, "--child", kind, "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--decoder", args.decoder, "--langchain-new-tokens", str(args.langchain_new_tokens),
           "--decode-batches", args.decode_batches,
           "--new-tokens", str(new_tokens or args.new_tokens), "--prefill-tokens", str(prefill_tokens or args.prefill_tokens),
           "--prompt-tokens", str(prompt_tokens or args.prompt_tokens), "--rows", *args.rows]
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    if args.dynamic_cache and extra.get("model") == "smollm2":  # the small model is where overhead shows
        cmd.append("--dynamic-cache")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **ISA_ENV[isa]}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["smollm2", "tinyllama-1.1b"],
                    help="models of the model rows (--models alone: none, e.g. for --threads-sweep only)")
    ap.add_argument("--rows", nargs="+", default=[r for r in ROWS if not r.endswith("_bf16")], choices=list(ROWS),
                    help="rows to run (the *_bf16 rows: quantized formats in a bf16 model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt before the timed decode")
    ap.add_argument("--big-prompt-tokens", type=int, help="decode prompt for the 1.1B model (default: --prompt-tokens)")
    ap.add_argument("--small-rows", nargs="+", choices=list(ROWS), help="rows for SmolLM2 (default: --rows)")
    ap.add_argument("--big-new-tokens", type=int, help="new tokens for the 1.1B model (default: --new-tokens)")
    ap.add_argument("--big-prefill-tokens", type=int, help="prefill length for the 1.1B model (default: --prefill-tokens)")
    ap.add_argument("--cache-bytes", type=int, default=96 << 20, help="GEMM rows rotate over this many bytes of layers")
    ap.add_argument("--dynamic-cache", action="store_true", help="also decode with the model's dynamic KV cache")
    ap.add_argument("--no-gemm", action="store_true")
    ap.add_argument("--merge", action="store_true", help="keep the rows of the last run (cpu_speed.json), add these")
    ap.add_argument("--no-llamacpp", action="store_true")
    ap.add_argument("--isa", nargs="+", default=["native"], choices=list(ISA_ENV),
                    help="run the model rows as this CPU (native) and/or as an AVX2-only one (avx2)")
    ap.add_argument("--decoder", default="auto", choices=list(LEAN), help="auto: the lean step where it fits")
    ap.add_argument("--no-split", action="store_true", help="skip the per-token time split")
    ap.add_argument("--no-bandwidth", action="store_true", help="skip the kernels' GB/s against read bandwidth")
    ap.add_argument("--no-langchain", action="store_true", help="skip QuantLLM vs LlamaCpp through chain.batch")
    ap.add_argument("--langchain-new-tokens", type=int, default=32)
    ap.add_argument("--decode-batches", default="1,8", help="batch sizes of the decode rows (comma-separated)")
    ap.add_argument("--threads-sweep", type=int, nargs="+", default=[],
                    help="also: SmolLM2 int4 b1 decode against llama.cpp at each of these thread counts, per --isa")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import torch
        torch.set_num_threads(args.threads)
        from cpu_speed_bandwidth import child_bandwidth
        from cpu_speed_langchain import child_langchain
        fn = {"model": child_model, "gemm": child_gemm, "llamacpp": child_llamacpp, "split": child_split,
              "bandwidth": child_bandwidth, "langchain": child_langchain}[args.child]
        print(json.dumps(fn(args)))
        return 0
    from quant_core import cpu_features
    started = time.time()
    info = cpu_features.summary()
    print("CPU:", json.dumps(info), flush=True)
    # --merge adds rows to the stored run(s); otherwise the table starts anew (old notes no longer apply)
    results = report.load(NAME) if args.merge else {"runs": {}, "notes": [], "models": {}, "gemm": {}, "llamacpp": None}
    results["cpu"] = {k: v for k, v in info.items() if k not in ("threads", "load_avg_start", "load_avg_end")}
    run = report.new_run(f"{info.get('machine', '?')} CPU, {os.cpu_count()} logical CPUs, {args.threads} threads",
                         "python benchmarks/cpu_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                         load_avg_start=[round(x, 2) for x in os.getloadavg()])
    run_id = report.add_run(results, run)
    for isa in args.isa:
        for model_name in args.models:
            for row in (args.small_rows or args.rows) if model_name == "smollm2" else args.rows:
                t = time.time()
                big = model_name == "tinyllama-1.1b"
                r = run_child("model", args, new_tokens=args.big_new_tokens if big else None,
                              prefill_tokens=args.big_prefill_tokens if big else None,
                              prompt_tokens=args.big_prompt_tokens if big else None, isa=isa, model=model_name, row=row)
                key = model_name if isa == "native" else f"{model_name}@{isa}"  # @avx2: as an AVX2-only CPU
                results["models"][f"{key}|{row}"] = {**r, "run": run_id}
                print(f"{key:>15} {row:>9}: {json.dumps(r)} ({time.time() - t:.0f} s)", flush=True)
                save(results)  # partial table so far, in case the run is cut short
    for kind, skip in (("split", args.no_split), ("bandwidth", args.no_bandwidth), ("langchain", args.no_langchain)):
        if not skip:
            results[kind] = {**run_child(kind, args, **({"cache-bytes": args.cache_bytes} if kind == "bandwidth"
                                                         else {})), "run": run_id}
            print(f"{kind}:", json.dumps(results[kind]), flush=True)
            save(results)
    if not args.no_llamacpp:
        results["llamacpp"] = {**run_child("llamacpp", args, new_tokens=args.new_tokens), "run": run_id}
        print("llama.cpp:", json.dumps(results["llamacpp"]), flush=True)
        save(results)
    if args.threads_sweep:
        results["threads_sweep"] = {**threads_sweep(args, run_child), "run": run_id}
        save(results)
    if not args.no_gemm:
        results["gemm"] = run_child("gemm", args, **{"cache-bytes": args.cache_bytes})
        results["gemm_run"], results["gemm_cache_bytes"] = run_id, args.cache_bytes
        print("GEMM ms:", json.dumps(results["gemm"]), flush=True)
    run.update(wall_s=round(time.time() - started, 1), load_avg_end=[round(x, 2) for x in os.getloadavg()])
    print(save(results))
    return 0


def save(results) -> str:
    report.save(NAME, results)
    return write_report(results)


if __name__ == "__main__":
    sys.exit(main())
