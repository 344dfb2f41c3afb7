"""Tables and target checks for benchmarks/cpu_speed.py's results (kept apart: formatting only)."""
from __future__ import annotations

import report
from cpu_speed_threads import sweep_table

NAME = "cpu_speed"
FLOAT = ("fp32", "bf16")


def _best_float(models, model_name, key):
    vals = [models.get(f"{model_name}|{f}", {}).get(key) for f in FLOAT]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def model_table(results, model_name):
    models = results["models"]
    settings = next((r["settings"] for k, r in results["models"].items() if k.startswith(model_name + "|")
                     and "settings" in r), {})
    lines = [f"### {model_name}", "", f"Settings: {settings}", "",
             "| row | run | kernel | decoder | linear weights MB | × bf16 bytes | prefill tok/s | × float | decode b1 tok/s "
             "| × float | decode b8 tok/s | × float | peak RSS decoding MB | × fp32 | decode b1 dynamic cache tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    bf16_bytes = models.get(f"{model_name}|bf16", {}).get("weight_bytes")
    fp32_rss = models.get(f"{model_name}|fp32", {}).get("peak_rss_decode_mb")
    floats = {k: _best_float(models, model_name, k) for k in ("prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s")}
    for key, r in models.items():
        name, row = key.split("|")
        if name != model_name:
            continue
        if "error" in r:
            lines.append(f"| {row} | {r.get('run', '?')} | error: {r['error']} |" + " |" * 12)
            continue
        ratio = lambda k: _fmt(r[k] / floats[k]) if floats[k] and r.get(k) else "—"  # noqa: E731
        lines.append(
            f"| {row} | {r.get('run', '?')} | {', '.join(r['kernels'])} | {r.get('decoder', 'StaticDecoder')} | "
            f"{r['weight_bytes'] / 1e6:.1f} | "
            f"{_fmt(r['weight_bytes'] / bf16_bytes) if bf16_bytes else '—'} | {_fmt(r['prefill_tok_s'], 1)} | "
            f"{ratio('prefill_tok_s')} | {_fmt(r['decode_b1_tok_s'])} | {ratio('decode_b1_tok_s')} | "
            f"{_fmt(r.get('decode_b8_tok_s'))} | {ratio('decode_b8_tok_s')} | {r['peak_rss_decode_mb']:.0f} | "
            f"{_fmt(r['peak_rss_decode_mb'] / fp32_rss) if fp32_rss else '—'} | "
            f"{_fmt(r.get('decode_b1_dynamic_tok_s'))} |")
    return lines


def gemm_table(gemm):
    gemm = {k: v for k, v in (gemm or {}).items() if k != "run"}
    if not gemm or "error" in gemm:
        return [f"GEMM timings failed: {gemm.get('error') if gemm else 'not run'}"]
    rows = sorted({k.split("|")[2] for k in gemm}, key=lambda r: list(gemm).index(next(k for k in gemm if k.endswith("|" + r))))
    lines = ["| layer (K→N) | M | " + " | ".join(f"{r} ms" for r in rows) + " | best quant × fp32 |",
             "|---|---|" + "---|" * (len(rows) + 1)]
    for shape, m in dict.fromkeys((k.split("|")[0], k.split("|")[1]) for k in gemm):
        vals = {r: gemm.get(f"{shape}|{m}|{r}") for r in rows}
        quant = [v for r, v in vals.items() if r not in FLOAT and v]
        speedup = _fmt(vals["fp32"] / min(quant)) if quant and vals.get("fp32") else "—"
        lines.append(f"| {shape} | {m} | " + " | ".join(_fmt(vals[r], 3) for r in rows) + f" | {speedup} |")
    return lines


def split_table(split):
    if not split or "error" in split:
        return [f"Split failed: {split['error']}" if split else "Not measured yet (a run without --no-split)."]
    lines = [f"Run {split.get('run', '?')}.", "", "| SmolLM2 row | decode path | ms / token | matmuls ms | attention ms | rest ms | tok/s |",
             "|---|---|---|---|---|---|---|"]
    for key, r in split.items():
        if key == "run":
            continue
        row, path = key.split("|")
        lines.append(f"| {row} | {path} ({r['decoder']}) | {r['total']:.2f} | {r['matmul']:.2f} | "
                     f"{r['attention']:.2f} | {r['rest']:.2f} | {1e3 / r['total']:.1f} |")
    return lines


def bandwidth_table(bw):
    if not bw or "error" in bw:
        return [f"Bandwidth run failed: {bw['error']}" if bw else "Not measured yet (a run without --no-bandwidth)."]
    read, end = bw["read_gb_s"], bw.get("read_gb_s_end", float("nan"))
    if not any(isinstance(v, dict) for v in bw["kernels"].values()):  # runs before the interleaved reference
        lines = [f"Run {bw.get('run', '?')}. Plain read (torch.sum over 512 MiB float32): {read:.1f} GB/s at the start, "
                 f"{end:.1f} GB/s at the end; % below is of the start figure.", "",
                 "| kernel | format | activations | layer | GB/s | % of read |", "|---|---|---|---|---|---|"]
    else:
        lines = [f"Run {bw.get('run', '?')}, {bw.get('threads', '?')} threads. Each kernel alternates with a plain read "
                 "of the same bytes per call (torch.sum over chunks of one layer's size; read, kernel, ..., read: "
                 "cpu_speed_bandwidth.py; a block's GB/s from its fastest call): % of read is the median "
                 "over its blocks of kernel GB/s / the median of the two adjacent read blocks, with the blocks' "
                 "min-max; adjacent reads: their median and range. A kernel whose adjacent reads ran under half the "
                 "run's median read (another job took the cores) was measured again at the end of the run. "
                 f"Whole-array read (512 MiB): {read:.1f} GB/s at the start, {end:.1f} GB/s at the end.", "",
                 "| kernel | format | activations | layer | GB/s | adjacent reads GB/s | % of read (min-max) |",
                 "|---|---|---|---|---|---|---|"]
    for key, r in bw["kernels"].items():
        kernel, fmt, compute, shape = key.split("|")
        if isinstance(r, dict):
            mark = " (disturbed twice: not counted)" if r.get("disturbed") else " (measured again)" if r.get("remeasured") else ""
            lines.append(f"| {kernel} | {fmt} | {compute} | {shape} | {r['gb_s']:.1f} | {r['read_gb_s']:.1f} "
                         f"({r['read_min']:.1f}-{r['read_max']:.1f}) | {100 * r['ratio']:.0f} % "
                         f"({100 * r['ratio_min']:.0f}-{100 * r['ratio_max']:.0f}){mark} |")
        else:
            lines.append(f"| {kernel} | {fmt} | {compute} | {shape} | {r:.1f} | {100 * r / read:.0f} % |")
    return lines


def bandwidth_ratios(bw, prefix: str) -> list[float]:
    """Kernel / read fractions of the kernels whose key starts with ``prefix``: against the adjacent
    reads where the run interleaved them, else against the run's start read."""
    return [r["ratio"] if isinstance(r, dict) else r / bw["read_gb_s"]
            for k, r in (bw or {}).get("kernels", {}).items()
            if k.startswith(prefix) and not (isinstance(r, dict) and r.get("disturbed"))]


def langchain_table(lc):
    if not lc or "error" in lc:
        return [f"LangChain run failed: {lc['error']}" if lc else "Not measured yet (a run without --no-langchain)."]
    lines = ["| provider | chain.batch tok/s | single prompt: first chunk s | whole answer s |", "|---|---|---|---|"]
    for name, r in (("QuantLLM (int4 g128, default int8 head, batch_size 16)", lc["quantllm"]), ("LangChain LlamaCpp", lc["llamacpp"])):
        lines.append(f"| {name} | {r['batch_tok_s']:.1f} | {r['first_chunk_s']:.3f} | {r['single_prompt_s']:.3f} |")
    lines += ["", f"Run {lc.get('run', '?')}. QuantLLM chain.batch outputs identical to its invoke loop: "
                  f"**{lc['quantllm'].get('batch_equals_invoke_loop')}**"]
    return lines


# Peak RSS while decoding before issue 15 (benchmarks/results/cpu_speed.md, 2026-11-25): not to be exceeded
RSS_BEFORE = {"smollm2|int4_sym": 1307.4140625, "tinyllama-1.1b|int4_sym": 1996.421875}


def targets(results):
    m, big, small = results["models"], "tinyllama-1.1b", "smollm2"
    def ratio(model, row, key, base=None):
        # a format runs in an fp32 or a bf16 model ("{row}_bf16"): the faster, as for float
        vals = [m.get(f"{model}|{r}", {}).get(key) for r in (row, f"{row}_bf16")]
        best = max((v for v in vals if v), default=None)
        b = _best_float(m, model, key) if base is None else base
        return best / b if best and b else None
    def fp32_ratio(model, row, key):
        a, b = m.get(f"{model}|{row}", {}).get(key), m.get(f"{model}|fp32", {}).get(key)
        return a / b if a and b else None
    lcpp = (results.get("llamacpp") or {}).get("decode_b1_tok_s")
    lc = results.get("langchain") or {}
    ours, theirs = lc.get("quantllm", {}), lc.get("llamacpp", {})
    bw = results.get("bandwidth") or {}
    avx2 = bandwidth_ratios(bw, "cpu_avx2|")
    rss = lambda key: (m.get(key, {}).get("peak_rss_decode_mb") or 0) / RSS_BEFORE[key] or None  # noqa: E731
    checks = [
        ("SmolLM2 int4 b1 decode ≥ 1.0× llama.cpp", ratio(small, "int4_sym", "decode_b1_tok_s", lcpp) if lcpp else None, 1.0),
        ("SmolLM2 int4 + int8 head b1 decode ≥ 1.0× llama.cpp", ratio(small, "int4_sym_head8", "decode_b1_tok_s", lcpp) if lcpp else None, 1.0),
        ("SmolLM2 int4 + int8 head b1 decode ≥ 1.0× llama.cpp, as AVX2-only (--isa avx2; llama.cpp: its native build)",
         ratio(f"{small}@avx2", "int4_sym_head8", "decode_b1_tok_s", lcpp) if lcpp else None, 1.0),
        ("chain.batch (16 × 32) ≥ 2× LangChain LlamaCpp", ours.get("batch_tok_s") / theirs["batch_tok_s"] if theirs else None, 2.0),
        ("single invoke first chunk ≤ LlamaCpp's (ratio ours / theirs)", ours.get("first_chunk_s") / theirs["first_chunk_s"] if theirs else None, -1.0),
        ("1.1B b1 decode int4 ≥ 3.0× float (AVX-512 kernel)", ratio(big, "int4_sym", "decode_b1_tok_s"), 3.0),
        ("1.1B b1 decode int4 ≥ 3.0× fp32 with the AVX2 kernel (--isa avx2)", fp32_ratio(f"{big}@avx2", "int4_sym", "decode_b1_tok_s"), 3.0),
        ("1.1B b8 decode int4 ≥ 1.5× float", ratio(big, "int4_sym", "decode_b8_tok_s"), 1.5),
        ("1.1B prefill int4 ≥ 1.0× float", ratio(big, "int4_sym", "prefill_tok_s"), 1.0),
        ("1.1B b8 decode int4 ≥ 1.5× float, as AVX2-only (--isa avx2)", ratio(f"{big}@avx2", "int4_sym", "decode_b8_tok_s"), 1.5),
        ("1.1B prefill int4 ≥ 1.0× float, as AVX2-only (--isa avx2)", ratio(f"{big}@avx2", "int4_sym", "prefill_tok_s"), 1.0),
        ("AVX2 kernel GEMV ≥ 70 % of read bandwidth (worst format / path / shape, fraction)", min(avx2) if avx2 else None, 0.7),
        ("AVX2 kernel GEMV ≥ 70 % of read bandwidth (best, fraction)", max(avx2) if avx2 else None, 0.7),
        ("SmolLM2 int4 peak RSS decoding ≤ before (ratio)", rss(f"{small}|int4_sym"), -1.0),
        ("1.1B int4 peak RSS decoding ≤ before (ratio)", rss(f"{big}|int4_sym"), -1.0),
    ]
    lines = ["| target | measured | met |", "|---|---|---|"]
    for name, value, bar in checks:
        met = "—" if value is None else ("yes" if (value >= bar if bar > 0 else value <= -bar) else "NO")
        lines.append(f"| {name} | {_fmt(value)} | {met} |")
    return lines


def render(data: dict) -> list[str]:
    cpu = data.get("cpu", {})
    out = report.header(NAME, "CPU speed (benchmarks/cpu_speed.py)")
    out += ["Medians of each run's repeats; decode = new tokens after a prompt (preallocated KV cache; the decoder "
            "column says which step ran: LeanDecoder = quant_core.decode's lean step), prefill = the prompt length "
            "given per model, the faster of one transformers forward and the decoder's prefill (what generation "
            "runs; each row, float or quantized, gets its own faster path); × float = against the faster of fp32/bf16. Ratios are "
            "only side by side within one run: the Runs section says which run each row is from.", "",
            f"CPU: ISA level `{cpu.get('isa_level')}` (detected `{cpu.get('detected')}`), PyTorch capability "
            f"`{cpu.get('torch_capability')}`, flags: {' '.join(cpu.get('flags', []))}", "",
            "![decode tokens/s per model and format](cpu_speed.png)", ""]
    for model_name in dict.fromkeys(k.split("|")[0] for k in data.get("models", {})):
        out += model_table(data, model_name) + [""]
    lcpp = data.get("llamacpp")
    if lcpp:
        out += ["### llama.cpp anchor (llama-cpp-python, same SmolLM2 Q4_1 GGUF, batch 1)", "",
                f"decode b1: {_fmt(lcpp.get('decode_b1_tok_s'))} tok/s" + (f" (llama-cpp-python {lcpp['version']})"
                                                                          if "version" in lcpp else f" — {lcpp}")
                + f" (run {lcpp.get('run', '?')})", ""]
    cache = data.get("gemm_cache_bytes", 96 << 20)
    out += ["### Per-layer GEMM, 1.1B shapes (median ms per call, weights rotated through "
            f"{cache >> 20} MiB of copies so caches do not flatter small layers; run {data.get('gemm_run', '?')})", ""]
    out += gemm_table(data.get("gemm"))
    out += ["", "### Per-token time split, SmolLM2 int4 batch 1 (transformers' modules vs the lean step)", ""]
    out += split_table(data.get("split"))
    out += ["", "### Kernel GEMV bandwidth (M = 1) against a plain read of memory, same run", ""]
    out += bandwidth_table(data.get("bandwidth"))
    out += ["", "### LangChain level: the same 16 prompts, greedy, same threads", ""]
    out += langchain_table(data.get("langchain"))
    out += ["", "### SmolLM2 int4 batch-1 decode against llama.cpp by threads", ""]
    out += sweep_table(data.get("threads_sweep"))
    out += ["", "### Targets (issue 15)", ""] + targets(data) + [""]
    return out + report.runs_section(data) + report.notes_section(data)


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()
