"""Issue 18's targets read off one gpu_speed.py run: the measured figure per target and met / missed.

Computed from the run's own rows (never typed in), so the table under "Targets" in gpu_speed.md
always matches the layer and decode tables above it. Ratios are the layer table's ×: bf16 cuBLAS
time (the faster of its eager and graph times) / the kernel's graph time. Correctness is not a
gpu_speed.py figure (gpu_speed_cuda_check.py measures it): a person adds that row after a check run.
"""
from __future__ import annotations

INT4, NF4, INT8 = "ours cuda int4 g128", "ours cuda nf4 g128", "ours cuda int8 per-ch"
KEPT = "ours cuda int4 g128, dequantized weight kept"  # the many-row fallback (a bf16 copy kept per layer)
PEERS = ("tinygemm int4 g128", "gemlite int4 g128", "bnb nf4 (bs64)")
# (rows M, column, minimum ×, label of the target)
LAYER_TARGETS = [(1, INT4, 3.0, "int4 g128 M=1 >= 3.0× on every 8B shape"), (1, NF4, 2.5, "nf4 M=1 >= 2.5×"),
                 (1, INT8, 1.8, "int8 M=1 >= 1.8×"), (16, INT4, 2.5, "M=16 >= 2.5×"), (64, INT4, 1.3, "M=64 >= 1.3×")]
BW_TARGET_PCT = 75.0  # int4 M=1: share of the measured copy bandwidth
M256_TARGET = 0.95  # by the fallback if need be
DECODE_TARGETS = {"1": 2.3, "16": 1.5}  # int4 g128, synthetic Llama-3-8B, batch -> minimum ×


def _x(cell: dict | None) -> float | None:
    return None if not cell or "error" in cell or cell.get("graph_us") is None else cell["x_bf16"]


def _join(values, spec: str = ".2f", unit: str = "×") -> str:
    return " / ".join("-" if v is None else f"{v:{spec}}{unit}" for v in values)


def _status(values, minimum: float) -> str:
    got = [v for v in values if v is not None]
    if len(got) < len(values):
        return f"not measured in {len(values) - len(got)} of {len(values)} shapes"
    short = sum(v < minimum for v in got)
    return "met" if not short else f"missed on {short} of {len(got)} shapes (best {max(got):.2f}×)"


def _by_m(rows: list[dict], m: int) -> list[dict]:
    return [r for r in rows if r["m"] == m]  # in the run's order of shapes


def layer_targets(rows: list[dict]) -> list[dict]:
    """One entry per layer target; ``rows``: one run's layer rows (shapes in the table's order)."""
    out = []
    for m, col, minimum, label in LAYER_TARGETS:
        xs = [_x(r["cells"].get(col)) for r in _by_m(rows, m)]
        measured, status = f"{col.removeprefix('ours ')}: {_join(xs)}", _status(xs, minimum)
        if m == 1 and col == INT4:
            bw = [r["int4_bw_pct_of_copy"] for r in _by_m(rows, 1)]
            measured += f"; {_join(bw, '.0f', ' %')} of copy bandwidth"
            bw_short = sum(b < BW_TARGET_PCT for b in bw)
            status += f"; bandwidth {'met' if not bw_short else f'missed on {bw_short} of {len(bw)}'}"
            label += f", >= {BW_TARGET_PCT:.0f} % of copy bandwidth"
        if m in (16, 64):
            for other in (NF4, INT8):
                measured += f"; {other.removeprefix('ours ')} {_join(_x(r['cells'].get(other)) for r in _by_m(rows, m))}"
        out.append({"target": label, "measured": measured, "status": status})
    m256 = _by_m(rows, 256)
    plain = [_x(r["cells"].get(INT4)) for r in m256]
    best = [max((v for v in (p, _x(r["cells"].get(KEPT))) if v is not None), default=None) for p, r in zip(plain, m256)]
    out.append({"target": f"M=256 >= {M256_TARGET}× (by the fallback if need be)",
                "measured": f"int4 {_join(plain)}; with the dequantized weight kept {_join(_x(r['cells'].get(KEPT)) for r in m256)}",
                "status": f"{_status(best, M256_TARGET)} (best of the two); without a kept copy: "
                          f"{_status(plain, M256_TARGET)}"})
    out.append(peer_target(rows))
    return out


def peer_target(rows: list[dict]) -> dict:
    """Our int4 graph time against each peer's in every row (a peer without a graph: its eager time);
    our nf4 against bitsandbytes nf4 as well. Cells a peer could not run are not counted."""
    behind, cells = [], 0
    for r in rows:
        for ours in (INT4, NF4):
            mine = r["cells"].get(ours, {}).get("graph_us")
            for peer in PEERS if ours == INT4 else PEERS[2:]:
                cell = r["cells"].get(peer, {})
                theirs = cell.get("graph_us") or cell.get("eager_us")
                if mine is None or theirs is None:
                    continue
                cells += 1
                if mine > theirs:
                    behind.append(f"{ours.removeprefix('ours cuda ')} vs {peer} at {r['k']}×{r['n']} M={r['m']} "
                                  f"({mine:.1f} vs {theirs:.1f} µs)")
    return {"target": "ahead of tinygemm, gemlite and bitsandbytes in every cell",
            "measured": f"behind in {len(behind)} of {cells} cells" + (": " + "; ".join(behind) if behind else ""),
            "status": "met" if cells and not behind else "not measured" if not cells else f"missed in {len(behind)} cells"}


def decode_target(rows: list[dict]) -> dict:
    """int4 g128 decode × bf16 per batch; the other formats' figures beside it."""
    by_name = {r["weights"]: r for r in rows if "batches" in r}
    int4 = by_name.get("int4 g128", {}).get("batches", {})
    xs = [int4.get(b, {}).get("x_bf16") for b in DECODE_TARGETS]
    others = "; ".join(f"{name} {_join(r['batches'].get(b, {}).get('x_bf16') for b in DECODE_TARGETS)}"
                       for name, r in by_name.items() if not name.startswith("bf16") and name != "int4 g128")
    short = [b for b, x in zip(DECODE_TARGETS, xs) if x is None or x < DECODE_TARGETS[b]]
    return {"target": "decode of the synthetic 8B: " + ", ".join(f"batch {b} >= {v}×" for b, v in DECODE_TARGETS.items()),
            "measured": f"int4 {_join(xs)}" + (f"; {others}" if others else ""),
            "status": "met" if not short else f"missed at batch {' and '.join(short)}"}


def run_targets(data: dict, run: str) -> list[dict]:
    """Targets from one run's layer and decode rows (whatever of the two it measured)."""
    layers = [r for r in data.get("layers", []) if r["run"] == run]
    decode = [r for r in data.get("decode", []) if r["run"] == run]
    return (layer_targets(layers) if layers else []) + ([decode_target(decode)] if decode else [])
