"""Out-of-domain quality: each algorithm's perplexity in domain (WikiText-2 test) and out of domain
(legal-ood.txt, never a calibration source), from one quantization per cell (issue 16).

    python benchmarks/quality_ood.py                                   # RTN, GPTQ, AWQ, TEQ at int4 g128 sym
    python benchmarks/quality_ood.py --rows RTN,GPTQ --columns int4_g128_sym,nf4_g64 --device cuda
    python benchmarks/quality_ood.py --rows GPTQ --variant 'damp 0.1={"damp_percent": 0.1}'

Windows: WikiText-2 test first 32 (the quality tables' convention), legal-ood every full window
(~49; ``--windows legal=16`` for a quick look). Calibration: the config's own default source
(the shipped sample unless the row sets ``calibration_dataset``), ``--n-samples`` windows of 512.
Cells are cached in ``results/quality_ood.json`` (keyed row, variant, column, samples, text and
windows) so a run cut short keeps its figures; ``results/quality_ood.md`` is rewritten after
every cell, with each row's share of RTN's gap closed per text (negative = worse than RTN).
Quantized layers are evaluated through their own modules (the kernel the device picks).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_columns import COLUMNS, ROWS, SEQLEN  # noqa: E402
from quality_texts import TEXTS, parse_selection  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "quality_ood.json"
DEFAULT_ROWS = "RTN,GPTQ,AWQ,TEQ"


def cell_key(row, variant, column, n, text, windows) -> str:
    return f"{row}{'+' + variant if variant else ''}:{column}:{n}:{text}:{windows or 'all'}"


def run(args, store: dict) -> None:
    import torch

    from quant_core import QuantConfig, quantize
    from quant_core.evaluation import perplexity, read_eval_text
    from quant_core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tok = load_model(args.model)
    texts = {t: read_eval_text(TEXTS[t].path) for t in args.texts}
    cells = store.setdefault("cells", {})

    def evaluate(q, row, variant, column, n):
        for t in args.texts:
            key = cell_key(row, variant, column, n, t, args.windows[t])
            if "ppl" not in cells.get(key, {}):
                cells[key] = {"ppl": perplexity(q.to(device), tok, texts[t], SEQLEN, args.windows[t], progress=False)}
                print(f"{key}: {cells[key]['ppl']:.3f}", flush=True)
                save(store, args)

    evaluate(model, "fp32", "", "-", 0)
    model.to("cpu")
    for row in args.rows:
        for variant, extra in ([("", {})] if row == "RTN" else args.variants):
            for column in args.columns:
                n = 0 if row == "RTN" else args.n_samples
                if all("ppl" in cells.get(cell_key(row, variant, column, n, t, args.windows[t]), {}) for t in args.texts):
                    continue
                cfg = QuantConfig(**{**COLUMNS[column]["quant_config"], **ROWS[row], **extra,
                                     "n_samples": args.n_samples})
                start = time.perf_counter()
                q = quantize(copy.deepcopy(model), cfg, tokenizer=tok, progress=False, device=device)
                store.setdefault("seconds", {})[f"{row}+{variant}:{column}:{n}"] = time.perf_counter() - start
                evaluate(q, row, variant, column, n)
                del q


def save(store: dict, args) -> None:
    STORE.write_text(json.dumps(store, indent=1, sort_keys=True))
    (RESULTS / "quality_ood.md").write_text(markdown(store, args))


def markdown(store: dict, args) -> str:
    cells = store.get("cells", {})

    def ppl(row, variant, column, n, t):
        c = cells.get(cell_key(row, variant, column, n, t, args.windows[t]), {})
        return c.get("ppl")

    heads = [f"{t} ({args.windows[t] or 'all'} windows)" for t in args.texts]
    lines = ["# In-domain and out-of-domain perplexity per algorithm (lower is better)", "",
             f"SmolLM2-135M-Instruct, seqlen {SEQLEN}; wiki = WikiText-2 test (in domain of the shipped calibration "
             f"sample), legal = shared/data/legal-ood.txt (license texts, never calibrated on). Calibration: "
             f"{args.n_samples} x {SEQLEN} windows of each config's default source. `gap` = share of RTN's gap "
             f"to fp32 closed (negative: worse than RTN).", "",
             "| algorithm | format | " + " | ".join(f"{h} | gap" for h in heads) + " |",
             "|---|---|" + "---|---|" * len(heads)]
    fp = {t: ppl("fp32", "", "-", 0, t) for t in args.texts}
    lines.append("| fp32 | - | " + " | ".join(f"{fp[t]:.2f} | " if fp[t] else "- | " for t in args.texts) + " |")
    for row in args.rows:
        for variant, _ in ([("", {})] if row == "RTN" else args.variants):
            for column in args.columns:
                n = 0 if row == "RTN" else args.n_samples
                out = []
                for t in args.texts:
                    p, r = ppl(row, variant, column, n, t), ppl("RTN", "", column, 0, t)
                    gap = "-" if None in (p, r, fp[t]) or r == fp[t] else f"{100 * (r - p) / (r - fp[t]):.0f} %"
                    out.append(f"{p:.2f} | {gap}" if p else "- | -")
                name = row + (f" ({variant})" if variant else "")
                lines.append(f"| {name} | {COLUMNS[column]['label']} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated from: " + ", ".join(ROWS).replace("%", "%%"))
    p.add_argument("--columns", default="int4_g128_sym", help=f"comma-separated from: {', '.join(COLUMNS)}")
    p.add_argument("--texts", default="wiki,legal", help=f"comma-separated from: {', '.join(TEXTS)}")
    p.add_argument("--windows", action="append", default=[], help="TEXT=N windows (0: all), e.g. legal=16")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=JSON extra QuantConfig fields for the calibrated rows (repeatable; none: defaults)")
    p.add_argument("--only-variants", action="store_true",
                   help="calibrated rows run only the --variant settings, not their defaults as well")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--model", default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    parse_selection(args, ROWS, COLUMNS)
    given = dict(w.split("=") for w in args.windows)
    args.windows = {t: int(given.get(t, TEXTS[t].windows or 0)) or None for t in TEXTS}
    args.variants = ([] if args.only_variants else [("", {})]) + [(v.partition("=")[0], json.loads(v.partition("=")[2])) for v in args.variant]
    store = json.loads(STORE.read_text()) if STORE.is_file() else {}
    run(args, store)
    print(markdown(store, args))


if __name__ == "__main__":
    main()
