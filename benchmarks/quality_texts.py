"""The evaluation texts every quality table measures, and how a cell keeps one figure per text (issue 16).

``wiki``: WikiText-2 test, first 32 windows of 512 tokens (in domain of the shipped calibration
sample; the tables' figure since the start). ``legal``: shared/data/legal-ood.txt, every full
window (~49), never a calibration source: it shows whether an algorithm calibrated on one domain
hurts another. Each quantized model is evaluated on every text in the same run.

A cell of a results JSON keeps the primary text's figure where it always was (``cell["ppl"]``,
so every stored WikiText figure stays valid) and the others under ``cell["texts"][text_id]``,
``text_id`` naming the text and its windows (``"legal:all"``): a figure measured on other windows
is another entry, never overwritten by one that is not comparable.

Only the standard library at import: renderers use this without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class EvalText:
    path: Path
    windows: int | None  # None: every full window
    label: str


TEXTS = {
    "wiki": EvalText(DATA / "wikitext2-test.txt", 32, "WikiText-2 test"),
    "legal": EvalText(DATA / "legal-ood.txt", None, "legal-ood"),
}
PRIMARY = "wiki"  # its figure is cell["ppl"]


def text_id(name: str, windows: int | None = ...) -> str:
    """``"legal:all"``, ``"wiki:32"``: the text and the windows its figure covers."""
    windows = TEXTS[name].windows if windows is ... else windows
    return f"{name}:{windows or 'all'}"


def windows_label(name: str) -> str:
    w = TEXTS[name].windows
    return f"first {w} windows" if w else "every full window"


def cell_ppl(cell: dict | None, name: str):
    """The cell's perplexity on text ``name`` at the table's windows, or None."""
    if not cell:
        return None
    if name == PRIMARY:
        return cell.get("ppl")
    return cell.get("texts", {}).get(text_id(name), {}).get("ppl")


def cell_run(cell: dict | None, name: str):
    """The run that measured the cell's figure on ``name`` (a text may come from a later run)."""
    if not cell:
        return None
    if name == PRIMARY:
        return cell.get("run")
    entry = cell.get("texts", {}).get(text_id(name), {})
    return entry.get("run", cell.get("run")) if entry else None


def missing_texts(cell: dict | None, names) -> list[str]:
    return [n for n in names if cell_ppl(cell, n) is None]


def with_figure(cell: dict | None, name: str, ppl: float, run: str, **extra) -> dict:
    """A copy of ``cell`` holding ``ppl`` for text ``name``; ``extra`` (e.g. the quantize seconds) goes
    beside the figure it belongs to: top level for the primary text, in the text's own entry otherwise."""
    cell = dict(cell or {})
    if name == PRIMARY:
        cell.pop("error", None)
        cell.update(ppl=ppl, run=run, **extra)
    else:
        cell.setdefault("run", run)
        cell["texts"] = {**cell.get("texts", {}), text_id(name): {"ppl": ppl, "run": run, **extra}}
    return cell


def token_windows(tokenizer, names, seqlen: int, max_windows: int | None = None) -> dict:
    """``{name: LongTensor [n, seqlen]}``: each text tokenized once per process, reused for every cell.
    ``max_windows`` overrides every text's windows: smoke tests only (the figures are then not the table's)."""
    from quant_core.evaluation import read_eval_text, windows

    return {n: windows(tokenizer, read_eval_text(TEXTS[n].path), seqlen, max_windows or TEXTS[n].windows)
            for n in names}


def evaluate(model, windows_by_text: dict, names, device) -> dict:
    """``{name: perplexity}`` of ``model`` (moved to ``device``) on each of ``names``."""
    from quant_core.evaluation import windows_perplexity

    model = model.to(device)
    return {n: windows_perplexity(model, windows_by_text[n], progress=False) for n in names}


def parse_selection(args, rows, columns) -> None:
    """Split the comma-separated ``--rows``/``--columns``/``--texts`` of ``args`` in place, refusing unknown names
    (with the known ones) before any model loads."""
    args.rows, args.columns, args.texts = args.rows.split(","), args.columns.split(","), args.texts.split(",")
    bad = [r for r in args.rows if r not in rows] + [c for c in args.columns if c not in columns] + \
          [t for t in args.texts if t not in TEXTS]
    if bad:
        raise SystemExit(f"unknown rows/columns/texts {bad}; rows: {', '.join(rows)}; columns: {', '.join(columns)}; "
                         f"texts: {', '.join(TEXTS)}")
