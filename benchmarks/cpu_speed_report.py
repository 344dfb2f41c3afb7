"""Tables and target checks for benchmarks/cpu_speed.py's results (kept apart: formatting only)."""
from __future__ import annotations

import report

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
             "| row | run | kernel | linear weights MB | × bf16 bytes | prefill tok/s | × float | decode b1 tok/s | × float "
             "| decode b8 tok/s | × float | peak RSS decoding MB | × fp32 | decode b1 dynamic cache tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    bf16_bytes = models.get(f"{model_name}|bf16", {}).get("weight_bytes")
    fp32_rss = models.get(f"{model_name}|fp32", {}).get("peak_rss_decode_mb")
    floats = {k: _best_float(models, model_name, k) for k in ("prefill_tok_s", "decode_b1_tok_s", "decode_b8_tok_s")}
    for key, r in models.items():
        name, row = key.split("|")
        if name != model_name:
            continue
        if "error" in r:
            lines.append(f"| {row} | {r.get('run', '?')} | error: {r['error']} |" + " |" * 11)
            continue
        ratio = lambda k: _fmt(r[k] / floats[k]) if floats[k] else "—"  # noqa: E731
        lines.append(
            f"| {row} | {r.get('run', '?')} | {', '.join(r['kernels'])} | {r['weight_bytes'] / 1e6:.1f} | "
            f"{_fmt(r['weight_bytes'] / bf16_bytes) if bf16_bytes else '—'} | {_fmt(r['prefill_tok_s'], 1)} | "
            f"{ratio('prefill_tok_s')} | {_fmt(r['decode_b1_tok_s'])} | {ratio('decode_b1_tok_s')} | "
            f"{_fmt(r['decode_b8_tok_s'])} | {ratio('decode_b8_tok_s')} | {r['peak_rss_decode_mb']:.0f} | "
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


def targets(results):
    m, big, small = results["models"], "tinyllama-1.1b", "smollm2"
    def ratio(model, row, key, base=None):
        # a format runs in an fp32 or a bf16 model ("{row}_bf16"): the faster, as for float
        vals = [m.get(f"{model}|{r}", {}).get(key) for r in (row, f"{row}_bf16")]
        best = max((v for v in vals if v), default=None)
        b = _best_float(m, model, key) if base is None else base
        return best / b if best and b else None
    bf16_bytes = m.get(f"{big}|bf16", {}).get("weight_bytes")
    # memory: the int4 run (fp32 or bf16 model) with the lower peak, named in the table
    int4 = min((m[k] for k in (f"{big}|int4_sym", f"{big}|int4_sym_bf16") if m.get(k, {}).get("peak_rss_decode_mb")),
               key=lambda r: r["peak_rss_decode_mb"], default={})
    fp32_rss = m.get(f"{big}|fp32", {}).get("peak_rss_decode_mb")
    lcpp = (results.get("llamacpp") or {}).get("decode_b1_tok_s")
    checks = [
        ("1.1B b1 decode int4 ≥ 2.5× float (format rows: the faster of fp32/bf16 model)", ratio(big, "int4_sym", "decode_b1_tok_s"), 2.5),
        ("1.1B b1 decode int8 ≥ 1.6× float", ratio(big, "int8", "decode_b1_tok_s"), 1.6),
        ("1.1B b1 decode nf4 ≥ 1.5× float", ratio(big, "nf4", "decode_b1_tok_s"), 1.5),
        ("1.1B b8 decode int4 ≥ 1.2× float", ratio(big, "int4_sym", "decode_b8_tok_s"), 1.2),
        ("1.1B prefill int4 ≥ 0.8× float", ratio(big, "int4_sym", "prefill_tok_s"), 0.8),
        ("1.1B int4 weight bytes ≤ 0.3× bf16", int4.get("weight_bytes") / bf16_bytes if bf16_bytes and int4 else None, -0.3),
        ("1.1B int4 peak RSS decoding ≤ 0.4× fp32 (the lower of the fp32- and bf16-model runs)", int4.get("peak_rss_decode_mb") / fp32_rss if fp32_rss and int4 else None, -0.4),
        ("SmolLM2 int4 b1 decode ≥ 0.5× llama.cpp", ratio(small, "int4_sym", "decode_b1_tok_s", lcpp) if lcpp else None, 0.5),
    ]
    lines = ["| target | measured | met |", "|---|---|---|"]
    for name, value, bar in checks:
        met = "—" if value is None else ("yes" if (value >= bar if bar > 0 else value <= -bar) else "NO")
        lines.append(f"| {name} | {_fmt(value)} | {met} |")
    return lines


def render(data: dict) -> list[str]:
    cpu = data.get("cpu", {})
    out = report.header(NAME, "CPU speed (benchmarks/cpu_speed.py)")
    out += ["Medians of each run's repeats; decode = new tokens after a prompt (static KV cache), prefill = one "
            "forward of the prompt length given per model; × float = against the faster of fp32/bf16. Ratios are "
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
    out += gemm_table(data.get("gemm")) + ["", "### Targets", ""] + targets(data) + [""]
    return out + report.runs_section(data) + report.notes_section(data)


def write_report(data: dict) -> str:
    return report.write_markdown(NAME, render(data)).read_text()
