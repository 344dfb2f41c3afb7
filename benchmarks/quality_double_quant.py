"""Double quantization on SmolLM2-135M-Instruct: perplexity (WikiText-2 test and legal-ood), sizes, scale error.

    python benchmarks/quality_double_quant.py                               # int4 g64 sym and nf4 g64, +- double quant
    python benchmarks/quality_double_quant.py --columns nf4_g64 --texts wiki

Each setting is quantized with RTN twice, without and with ``double_quant`` (blocks of 256
scales), saved to a temporary folder (checkpoint size) and evaluated on the first ``--windows``
512-token windows of each text. The decoded scales are compared with the scales they replace
(relative error per scale), and the weights with the float ones (relative Frobenius error), so
the table shows what the 8-bit scale codes cost. Figures go to the ``double_quant`` part of
benchmarks/results/quality.json (one entry per setting and double-quant state, saved after every
figure, each naming its run); quality.md is regenerated from it.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from quality_columns import DOUBLE_QUANT_COLUMNS, SEQLEN, STORE  # noqa: E402
from quality_report import write_quality  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTS = {"wiki": DATA / "wikitext2-test.txt", "legal": DATA / "legal-ood.txt"}


def scale_and_weight_errors(plain, dq, model) -> dict:
    """Relative error of every decoded scale against the scale it replaces, and of the weights (plain and
    double-quantized) against the float ones; the codes must be the same in both."""
    import torch

    from quant_core import QuantLinear

    rel, err, err_dq, norm = [], 0.0, 0.0, 0.0
    for name, layer in plain.named_modules():
        if not isinstance(layer, QuantLinear):
            continue
        other = dq.get_submodule(name)
        assert torch.equal(layer.qweight, other.qweight), f"{name}: double quantization changed the codes"
        s, d = layer.scales.float(), other.scales.float()
        rel.append(((d - s).abs() / s.abs()).reshape(-1))
        weight = model.get_submodule(name).weight.detach().float()
        err += (layer.packed.dequantize() - weight).pow(2).sum().item()
        err_dq += (other.packed.dequantize() - weight).pow(2).sum().item()
        norm += weight.pow(2).sum().item()
    rel = torch.cat(rel)
    return {"scale_rel_rms": rel.pow(2).mean().sqrt().item(), "scale_rel_max": rel.max().item(),
            "weight_rel_err": (err / norm) ** 0.5, "weight_rel_err_dq": (err_dq / norm) ** 0.5}


def measure(model, tok, fields: dict) -> tuple[dict, object]:
    from quant_core import QuantConfig, quantize
    from quant_core.inspect import packed_bytes
    from quant_core.serialization import save_quantized

    start = time.perf_counter()
    q = quantize(copy.deepcopy(model), QuantConfig(**fields), progress=False)
    row = {"quant_s": time.perf_counter() - start, "packed_mb": packed_bytes(q) / 1e6}
    with tempfile.TemporaryDirectory() as tmp:
        save_quantized(q, tok, Path(tmp) / "q")
        row["ckpt_mb"] = sum(f.stat().st_size for f in (Path(tmp) / "q").rglob("*") if f.is_file()) / 1e6
    return row, q


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--columns", nargs="*", default=list(DOUBLE_QUANT_COLUMNS), choices=list(DOUBLE_QUANT_COLUMNS))
    p.add_argument("--texts", nargs="*", default=list(TEXTS), choices=list(TEXTS))
    p.add_argument("--windows", type=int, default=32, help="first N windows of 512 tokens of each text")
    args = p.parse_args(argv)

    import torch

    from quant_core.evaluation import perplexity, read_eval_text
    from quant_core.loading import load_model

    model, tok = load_model()
    texts = {t: read_eval_text(TEXTS[t]) for t in args.texts}
    device = f"CPU x{os.cpu_count()} ({torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f} at start)"
    data = report.load(STORE)
    run_id = report.add_run(data, report.new_run(
        device, "python benchmarks/quality_double_quant.py " + " ".join(argv or sys.argv[1:])))
    report.save(STORE, data)
    for column in args.columns:
        plain = None
        for dq in (False, True):
            key = f"{column}:{'dq' if dq else 'plain'}"
            fields = {**DOUBLE_QUANT_COLUMNS[column]["quant_config"], "double_quant": dq}
            row, q = measure(model, tok, fields)
            if dq:
                row.update(scale_and_weight_errors(plain, q, model))
            else:
                plain = q
            entry = {**row, "run": run_id}  # a rerun replaces the setting's figures whole
            report.put(STORE, "double_quant", key, entry)
            for text in args.texts:
                ppl = perplexity(q, tok, texts[text], SEQLEN, args.windows, progress=False)
                entry[f"ppl_{text}"], entry[f"windows_{text}"] = ppl, args.windows
                report.put(STORE, "double_quant", key, entry)
                print(f"{key} {text}: {ppl:.4f}", flush=True)
            print(f"{key}: {row}", flush=True)
            write_quality()


if __name__ == "__main__":
    main()
