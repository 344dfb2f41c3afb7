"""GPU speed: layer GEMMs (Llama-3-8B shapes), decode tokens/s on a synthetic 8B, GPTQ on GPU.

Run on a CUDA machine:  python benchmarks/gpu_speed.py [--quick] [--skip-decode] [--gptq]
Prints each figure as it is measured, keeps them in benchmarks/results/gpu_speed.json and
generates benchmarks/results/gpu_speed.md from it (--out-dir elsewhere). Every ratio was
measured side by side in this one run; --merge adds a run's rows to the stored file instead,
which then says that it is stitched from several runs.

Layer timing: each kernel is timed eagerly and replayed in a CUDA graph, cycling
through enough weight copies (>= 4x the L2 size) that every call reads its weight
from HBM; the figure is the median over repetitions of (time of a round / calls).

--peers adds bitsandbytes NF4 (blocksize 64) and gemlite int4 g128 columns (benchmarks/gpu_peers.py),
and rows to the decode table (every nn.Linear swapped for the peer's layer);
a peer that cannot be imported or run gets "n/a: reason" cells, one whose CUDA-graph capture fails
gets its eager time and "no graph". Neither is a project dependency; to make them importable:
  python3 -m pip install -q --no-index --no-deps --target /tmp/peers /tmp/peerw-on-device/*.whl  # bitsandbytes
  tar xzf /tmp/peerw-on-device/gemlite-0.6.0.post2.tar.gz -C /tmp   # pure Python + Triton; imports unbuilt
  PYTHONPATH=/tmp/peers:/tmp/gemlite-0.6.0.post2 python benchmarks/gpu_speed.py --peers
(bitsandbytes also imports numpy, packaging and typing_extensions; gemlite numpy, triton >= 3.6 and tqdm,
which gpu_peers.py stubs if it is missing.)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from quant_core.formats import get_format, pack_codes  # noqa: E402
from quant_core.kernels.base import LayerSpec  # noqa: E402
from quant_core.kernels.cuda_kernel import CudaKernel  # noqa: E402
from quant_core.kernels.triton_kernel import TritonKernel  # noqa: E402
from quant_core.packed import PackedWeight  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402 - same folder
from gpu_peers import PEERS, probe, short_reason  # noqa: E402 - same folder; imports only torch
from gpu_speed_model import decode_section, gptq_section  # noqa: E402 - same folder
from gpu_speed_report import NAME, write_report  # noqa: E402 - same folder
from gpu_speed_targets import run_targets  # noqa: E402 - same folder

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)]  # (K in, N out)
ROWS = [1, 16, 64, 256]
# (column, format, group size, kernel): the CUDA kernel in every format, Triton (the fallback) for int4


class CudaKeptKernel(CudaKernel):
    """CudaKernel keeping each layer's dequantized weight (QUANTLLM_CUDA_DENSE_CACHE=1): the
    many-row fallback at the memory cost of a bf16 copy."""

    def __init__(self, packed, spec):
        super().__init__(packed, spec)
        self.keep_dense = True


OURS = [("cuda int4 g128", "int4", 128, CudaKernel), ("cuda nf4 g128", "nf4", 128, CudaKernel),
        ("cuda int8 per-ch", "int8", -1, CudaKernel), ("triton int4 g128", "int4", 128, TritonKernel),
        ("cuda int4 g128, dequantized weight kept", "int4", 128, CudaKeptKernel)]
TRITON_UNTUNED = "triton int4 g128 (heuristic config, untuned)"
# --skip-columns: our optional columns, by the kernel class they time (neither is one of issue 18's targets
# bar the kept copy's M=256 fallback; the kept column tunes every row count on first use: no shipped picks)
OPTIONAL = {"triton": TritonKernel, "kept": CudaKeptKernel}
TARGET_TITLE = "Targets (issue 18), shapes 4096×4096 / 4096×14336 / 14336×4096 / 4096×128256, this run"
DEV = "cuda"
BF16, TINYGEMM = "bf16 cuBLAS", "tinygemm int4 g128"  # column names of the layer table in gpu_speed.json

def timed(calls, graph: bool, reps: int = 15) -> float:
    """Median µs per call of ``calls`` (a round of callables), eagerly or as one replayed graph."""
    calls = list(calls) * max(1, -(-8 // len(calls)))  # at least 8 calls a round
    for c in calls:
        c()
    torch.cuda.synchronize()
    run = lambda: [c() for c in calls]  # noqa: E731
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run()
        run = g.replay
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    return statistics.median(times)


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=DEV)
    b = torch.empty_like(a)
    us = timed([lambda: b.copy_(a)], graph=False, reps=20)
    return 2 * a.numel() / us / 1e6  # TB/s, bytes read + written


def random_packed(fmt_name: str, k: int, n: int, group_size: int) -> PackedWeight:
    fmt = get_format(fmt_name)
    g = 1 if group_size <= 0 else k // group_size
    codes = torch.randint(0, 1 << fmt.bits, (n, k), dtype=torch.uint8, device=DEV)
    scales = (torch.rand(n, g, device=DEV) * 0.02 + 0.001).half()
    return PackedWeight(fmt, k, n, group_size, pack_codes(codes, fmt.bits), scales)


def tinygemm_op(k: int, n: int):
    """PyTorch's int4 g128 tinygemm (``_weight_int4pack_mm``), or None where this build lacks it."""
    try:
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, device=DEV)
        q8 = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
        w = torch.ops.aten._convert_weight_to_int4pack(q8, 8)
        sz = torch.stack([torch.rand(k // 128, n, device=DEV) * 0.02,
                          torch.zeros(k // 128, n, device=DEV)], -1).to(torch.bfloat16).contiguous()
        return lambda x: torch.ops.aten._weight_int4pack_mm(x, w, 128, sz), q8.numel() + sz.numel() * 2
    except Exception as exc:  # noqa: BLE001 - report, don't fail the run
        print(f"tinygemm unavailable: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
        return None


def copies_for(nbytes: int) -> int:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(2, -(-4 * l2 // nbytes))


def peer_cell(calls, bf16_eager: float, bf16_graph: float) -> dict:
    """One peer's cell; a failure to run becomes a short reason, a failed graph capture its eager time only."""
    try:
        eager = timed(calls, False)
    except Exception as exc:  # noqa: BLE001 - a peer failing is a table entry
        print(f"  peer failed: {type(exc).__name__}: {exc}", flush=True)
        torch.cuda.synchronize()
        return {"error": short_reason(exc)}
    try:
        graph = timed(calls, True)
    except Exception as exc:  # noqa: BLE001
        print(f"  peer graph capture failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        torch.cuda.synchronize()
        return {"eager_us": eager, "graph_us": None, "x_bf16_eager": bf16_eager / eager}
    return {"eager_us": eager, "graph_us": graph, "x_bf16": bf16_graph / graph}


def layer_table(shapes, rows_list, copy_tbs: float, run: str, peers=(), on_rows=None) -> list[dict]:
    """Rows of gpu_speed.json's ``layers``. ``peers``: (label, builder) pairs from gpu_peers.py; a str
    in place of the builder is the reason that peer cannot run, shown in each of its cells."""
    rows = []
    for k, n in shapes:
        wb = torch.randn(n, k, device=DEV, dtype=torch.bfloat16)
        bf16_w = [wb] + [wb.clone() for _ in range(copies_for(wb.numel() * 2) - 1)]
        tg = tinygemm_op(k, n)
        if tg:
            tg = [tg[0]] + [tinygemm_op(k, n)[0] for _ in range(copies_for(tg[1]) - 1)]
        ours = []
        for label, fmt, gs, kernel_class in OURS:
            p0 = random_packed(fmt, k, n, gs)
            spec = LayerSpec.of(p0, "bf16", "cuda")
            kernels = [kernel_class(p0, spec)]
            kernels += [kernel_class(random_packed(fmt, k, n, gs), spec) for _ in range(copies_for(p0.nbytes()) - 1)]
            ours.append((kernels, p0.nbytes()))
        peer_fns = []  # per peer: forward callables over weight copies, or the reason it cannot run
        for label, build in peers:
            try:
                peer_fns.append(build if isinstance(build, str) else  # ~4.25-bit weights: copies as for 4 bits
                                [build(wb) for _ in range(copies_for(k * n // 2))])
            except Exception as exc:  # noqa: BLE001 - a peer failing is a table entry
                print(f"  {label} failed to build for {k}×{n}: {type(exc).__name__}: {exc}", flush=True)
                peer_fns.append(short_reason(exc))
        for m in rows_list:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            cells, base, bf16_eager = {}, None, None
            for name, calls in [(BF16, [lambda w=w: F.linear(x, w) for w in bf16_w])] + \
                    ([(TINYGEMM, [lambda f=f: f(x) for f in tg])] if tg else []) + \
                    [(f"ours {lbl[0]}", [lambda kk=kk: kk.forward(x) for kk in ks]) for lbl, (ks, _) in zip(OURS, ours)]:
                eager, graph = timed(calls, False), timed(calls, True)
                base = min(eager, graph) if base is None else base  # bf16: whichever mode is faster
                bf16_eager = eager if bf16_eager is None else bf16_eager
                cells[name] = {"eager_us": eager, "graph_us": graph, "x_bf16": base / graph}
            if not tg:  # keep the column where it stands when the kernel exists
                cells = {BF16: cells.pop(BF16), TINYGEMM: {"error": "n/a"}, **cells}
            bw = ours[0][1] / cells[f"ours {OURS[0][0]}"]["graph_us"] / 1e6
            for (label, _), fs in zip(peers, peer_fns):
                cells[label] = {"error": fs} if isinstance(fs, str) else \
                    peer_cell([lambda f=f: f(x) for f in fs], bf16_eager, base)
            rows.append({"run": run, "k": k, "n": n, "m": m, "cells": cells, "int4_bw_tbs": bw,
                         "int4_bw_pct_of_copy": 100 * bw / copy_tbs})
            print(f"{k}x{n} M={m}: " + "; ".join(f"{c}: {v.get('graph_us') or v.get('error')}" for c, v in cells.items()),
                  flush=True)
            if on_rows:
                on_rows(rows)  # saved row by row: a run cut short keeps what it measured
        from quant_core.kernels.cuda_kernel import CACHE as CUDA_CACHE
        from quant_core.kernels.triton_tuning import CACHE
        print("tuned:", {f"{key[0]} M<={key[1]} {key[4]}b{'cb' if key[6] else ''}": cfg.label()
                         for key, cfg in CACHE.best.items() if key[2:4] == (k, n)},
              {f"M<={key[1]} {key[4]} {key[5]}": cfg.label() for key, cfg in CUDA_CACHE.best.items()
               if key[2:4] == (k, n)}, flush=True)
        del bf16_w, ours, tg, peer_fns
        torch.cuda.empty_cache()
    return rows


def launch_overhead(run: str) -> dict:
    p = random_packed("int4", 4096, 4096, 128)
    kern = CudaKernel(p, LayerSpec.of(p, "bf16", "cuda"))
    x = torch.randn(1, 4096, device=DEV, dtype=torch.bfloat16)
    kern.forward(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        kern.forward(x)
    host = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    eager, graph = timed([lambda: kern.forward(x)] * 20, False), timed([lambda: kern.forward(x)] * 20, True)
    print(f"launch overhead: host {host:.1f} us, eager {eager:.1f} us, graph {graph:.1f} us", flush=True)
    return {"run": run, "host_us": host, "eager_us": eager, "graph_us": graph}


def start(args, copy_tbs: float) -> tuple[dict, str]:
    """The stored results (--merge) or a fresh file, with this run recorded."""
    props = torch.cuda.get_device_properties(0)
    data = report.load(NAME) if args.merge else {"runs": {}, "notes": []}
    for part in ("layers", "launch", "decode", "gptq", "targets"):
        data[part] = data.get(part, []) if args.merge else []
    data["setup"] = {"gpu": props.name, "sms": props.multi_processor_count, "l2_mb": props.L2_cache_size >> 20,
                     "torch": torch.__version__, "triton": triton.__version__,
                     "transformers": transformers.__version__,
                     "copy_bandwidth": f"{copy_tbs:.2f} TB/s (1 GiB device-to-device, read + write)"}
    run_id = report.add_run(data, report.new_run(props.name, "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:])),
                            args.run_id)
    if len(data["runs"]) > 1 and not data.get("stitched"):
        data["stitched"] = f"rows from {len(data['runs'])} runs (--merge); ratios are side by side within a run only."
    return data, run_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 shapes, M in 1/16/64")
    ap.add_argument("--shapes", nargs="+", metavar="KxN", help="layer shapes to time (default: the five Llama-3-8B ones)")
    ap.add_argument("--rows", nargs="+", type=int, metavar="M", help=f"row counts to time (default: {ROWS})")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--gptq", action="store_true", help="also time GPTQ int4 g128 of the synthetic model")
    ap.add_argument("--peers", action="store_true",
                    help="also time bitsandbytes nf4 (bs64) and gemlite int4 g128, where importable, "
                         "in the layer table and the decode table")
    ap.add_argument("--decode-layers", type=int, default=32, help="decoder layers of the synthetic Llama-3-8B")
    ap.add_argument("--merge", action="store_true", help="add this run's rows to the stored gpu_speed.json "
                    "(the file then says it is stitched from several runs)")
    ap.add_argument("--run-id", help="name of this run in the file (default: date and commit)")
    ap.add_argument("--out-dir", help="folder for gpu_speed.json/.md (default: benchmarks/results)")
    ap.add_argument("--skip-columns", nargs="+", choices=sorted(OPTIONAL), default=[],
                    help="leave out our Triton column and/or the kept-dequantized-weight column")
    ap.add_argument("--triton-untuned", action="store_true",
                    help="Triton column with its heuristic default config (tuning compiles for minutes)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_speed.py needs a CUDA GPU; none is visible to PyTorch")
    if args.out_dir:
        report.RESULTS = Path(args.out_dir)
    copy_tbs = copy_bandwidth()
    data, run_id = start(args, copy_tbs)
    print(f"GPU: {data['setup']}", flush=True)
    peers = []
    if args.peers:
        for label, build, module in PEERS:
            try:
                data.setdefault("peers", {})[label] = probe(build, module)
                peers.append((label, build))
            except Exception as exc:  # noqa: BLE001 - an unavailable peer is reported, not fatal
                data.setdefault("peers", {})[label] = f"unavailable: {type(exc).__name__}: {str(exc).strip()[:200]}"
                torch.cuda.synchronize()
                peers.append((label, short_reason(exc)))
    if args.triton_untuned:  # the Triton tuner's cache answers its first candidate; the CUDA tuner is separate
        from quant_core.kernels import triton_tuning
        triton_tuning.CACHE.choose = lambda key, candidates, run, tune: candidates[0]
        OURS[:] = [(o[0].replace("triton int4 g128", TRITON_UNTUNED), *o[1:]) if o[3] is TritonKernel else o
                   for o in OURS]
    OURS[:] = [o for o in OURS if o[3] not in [OPTIONAL[c] for c in args.skip_columns]]
    if not args.skip_layers:
        shapes = [tuple(map(int, s.lower().split("x"))) for s in args.shapes] if args.shapes else \
            SHAPES[:2] + SHAPES[-1:] if args.quick else SHAPES
        done = list(data["layers"])
        data["layers"] += layer_table(shapes, args.rows or ([1, 16, 64] if args.quick else ROWS), copy_tbs, run_id, peers,
                                      on_rows=lambda rows: save({**data, "layers": done + rows}))
        data["launch"].append(launch_overhead(run_id))
        save(data)
    if not args.skip_decode:
        done = list(data["decode"])
        data["decode"] += decode_section(run_id, args.decode_layers, peers=peers,
                                         on_row=lambda rows: save({**data, "decode": done + rows}))
        save(data)
    if args.gptq:
        data["gptq"].append(gptq_section(run_id, args.decode_layers))
    if not args.merge:  # a fresh file: its targets from this run's rows (a person adds correctness after)
        data.update(targets=run_targets(data, run_id), target_title=TARGET_TITLE,
                    target_header=["target", "measured (graph-replayed, × bf16 = faster of its eager and graph)",
                                   "status"])
    print(f"wrote {save(data)}")


def save(data: dict) -> Path:
    report.save(NAME, data)
    write_report(data)
    return report.path_of(NAME, ".md")


if __name__ == "__main__":
    main()
