"""Which constrained-decoding library: per-token cost of a JSON-schema mask on CPU, SmolLM2's tokenizer.

For xgrammar, llguidance, outlines-core and lm-format-enforcer (those installed) this times, on the
embedded SmolLM2-135M-Instruct tokenizer (49152 tokens):
  - the one-time vocabulary setup per tokenizer and the compile time of one JSON schema;
  - one decoding step's mask work for B rows (B = 1 and 8): fill each row's allowed-token mask,
    set the other logits of a [B, 49152] float32 tensor to -inf, advance each row by one token.
    Every library's mask goes through the same plain-torch masking (``apply_bitmask``: llguidance's
    own is a torch.compile kernel, which on CPU needs a C++ compiler at run time).
Every row follows the same valid JSON answer (its SmolLM2 tokens), so every library does the same work.
Then it times one real decoding step of SmolLM2 int4 g128 at B = 1 and 8 (the engine, greedy), and
prints each library's mask cost as a share of that step. Medians of 3 runs; the load average is printed.
What it printed, and why llguidance was chosen: docs/constrained_libraries.md.

    python benchmarks/constrained_libraries.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoTokenizer

from quant_core.loading import embedded_model_dir

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"}, "author": {"type": "string"}, "year": {"type": "integer"},
    "genres": {"type": "array", "items": {"type": "string"}}, "in_print": {"type": "boolean"}},
    "required": ["title", "author", "year", "genres", "in_print"], "additionalProperties": False}
ANSWER = ('{"title": "The Left Hand of Darkness", "author": "Ursula K. Le Guin", "year": 1969, '
          '"genres": ["science fiction", "anthropology"], "in_print": true}')


def bit_allowed(bitmask_row: torch.Tensor, token: int) -> bool:
    return bool((int(bitmask_row[token // 32]) >> (token % 32)) & 1)


class Llguidance:
    name = "llguidance"

    def __init__(self, tok):
        import llguidance
        import llguidance.hf
        import llguidance.torch
        self.llg, self.kernels = llguidance, llguidance.torch
        self.tokenizer = llguidance.hf.from_tokenizer(tok)

    def compile(self, schema):
        return self.llg.LLMatcher.grammar_from_json_schema(schema)

    def matcher(self, grammar):
        return self.llg.LLMatcher(self.tokenizer, grammar)

    def bitmask(self, batch, vocab):
        return self.kernels.allocate_token_bitmask(batch, vocab)

    def step(self, matchers, bitmask, logits, tokens):
        for i, m in enumerate(matchers):
            self.kernels.fill_next_token_bitmask(m, bitmask, i)
        apply_bitmask(logits, bitmask)
        for m, t in zip(matchers, tokens):
            assert m.consume_token(t), m.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar
        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
        self.compiler = xgrammar.GrammarCompiler(info)

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema))

    def matcher(self, grammar):
        return self.xgr.GrammarMatcher(grammar)

    def bitmask(self, batch, vocab):
        return self.xgr.allocate_token_bitmask(batch, vocab)

    def step(self, matchers, bitmask, logits, tokens):
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, i)
        apply_bitmask(logits, bitmask)
        for m, t in zip(matchers, tokens):
            assert m.accept_token(t)


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tok):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema
        self.oc, self.to_regex = outlines_core, build_regex_from_schema
        byte_of = {u: b for b, u in byte_level_symbols().items()}
        special = set(tok.all_special_ids)
        vocab: dict[bytes, list[int]] = {}
        for text, idx in tok.get_vocab().items():  # SmolLM2 is byte-level BPE: symbols stand for bytes
            if idx not in special:
                vocab.setdefault(bytes(byte_of[c] for c in text), []).append(idx)
        self.vocabulary = outlines_core.Vocabulary(tok.eos_token_id, vocab)

    def compile(self, schema):
        return self.oc.Index(self.to_regex(json.dumps(schema)), self.vocabulary)

    def matcher(self, index):
        return self.oc.Guide(index)

    def bitmask(self, batch, vocab):
        return torch.zeros(batch, (vocab + 31) // 32, dtype=torch.int32)

    def step(self, guides, bitmask, logits, tokens):
        for i, g in enumerate(guides):
            g.write_mask_into(bitmask[i].data_ptr(), bitmask[i].numel(), bitmask.element_size())
        apply_bitmask(logits, bitmask)
        for g, t in zip(guides, tokens):
            g.advance(t)


class LmFormatEnforcer:
    name = "lm-format-enforcer"

    def __init__(self, tok):
        import sys

        import transformers.tokenization_utils_base
        # lm-format-enforcer 0.11 imports transformers.tokenization_utils, which transformers 5 removed
        sys.modules.setdefault("transformers.tokenization_utils", transformers.tokenization_utils_base)
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer
        from lmformatenforcer.integrations.transformers import build_token_enforcer_tokenizer_data
        self.parser, self.enforcer = JsonSchemaParser, TokenEnforcer
        self.data = build_token_enforcer_tokenizer_data(tok)

    def compile(self, schema):
        return schema

    def matcher(self, schema):
        return [self.enforcer(self.data, self.parser(schema)), []]  # (enforcer, tokens so far)

    def bitmask(self, batch, vocab):
        return torch.zeros(batch, vocab, dtype=torch.bool)

    def step(self, rows, allowed, logits, tokens):
        allowed.zero_()
        for i, (enforcer, seq) in enumerate(rows):
            allowed[i, enforcer.get_allowed_tokens(seq).allowed_tokens] = True
        logits.masked_fill_(~allowed, float("-inf"))
        for (enforcer, seq), t in zip(rows, tokens):
            seq.append(t)


def byte_level_symbols() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: byte -> the printable symbol that stands for it in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    symbols, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in symbols:
            symbols[b], extra = chr(256 + extra), extra + 1
    return symbols


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    logits.masked_fill_(~bits.bool().view(bitmask.shape[0], -1)[:, :logits.shape[1]], float("-inf"))


LIBRARIES = [Llguidance, Xgrammar, OutlinesCore, LmFormatEnforcer]


def time_library(cls, tok, answer_ids, batches, repeats) -> dict:
    t0 = time.perf_counter()
    lib = cls(tok)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = lib.compile(SCHEMA)
    compile_s = time.perf_counter() - t0
    result = {"setup_s": setup, "compile_s": compile_s}
    vocab = len(tok)
    for batch in batches:
        runs = []
        for _ in range(repeats):
            matchers = [lib.matcher(grammar) for _ in range(batch)]
            bitmask, logits = lib.bitmask(batch, vocab), torch.zeros(batch, vocab)
            t0 = time.perf_counter()
            for token in answer_ids:
                lib.step(matchers, bitmask, logits, [token] * batch)
            runs.append((time.perf_counter() - t0) / len(answer_ids))
        result[batch] = statistics.median(runs)
    return result


def model_step_seconds(batches, repeats, steps) -> dict:
    from quant_core import QuantConfig
    from quant_core.auto import engine_for_source
    from quant_core.engine import GenerationParams
    engine = engine_for_source(None, quantization_config=QuantConfig(weight_dtype="int4", group_size=128),
                               max_batch_size=max(batches))
    prompt = engine.render_chat([{"role": "user", "content": "Describe a famous novel as JSON."}])
    params = GenerationParams(max_new_tokens=steps)
    engine.generate([prompt] * max(batches), params)  # warm-up: kernels are chosen on first use
    out = {}
    for batch in batches:
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.generate([prompt] * batch, params)
            runs.append((time.perf_counter() - t0) / steps)
        out[batch] = statistics.median(runs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16, help="decoding steps timed per model run")
    args = ap.parse_args(argv)
    batches = (1, 8)
    print(f"load average before: {os.getloadavg()}", flush=True)
    step = model_step_seconds(batches, args.repeats, args.steps)
    print(f"model step (median of {args.repeats}): B=1 {step[1] * 1e3:.1f} ms, B=8 {step[8] * 1e3:.1f} ms; "
          f"load average {os.getloadavg()}", flush=True)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    answer_ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    print(f"{len(answer_ids)} answer tokens\n")
    print("| library | vocab setup (s) | schema compile (ms) | mask/step B=1 (ms) | % of step B=1 "
          "| mask/step B=8 (ms) | % of step B=8 |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for cls in LIBRARIES:
        try:
            r = time_library(cls, tok, answer_ids, batches, args.repeats)
        except ImportError as exc:
            print(f"| {cls.name} | not installed ({exc}) |||||", flush=True)
            continue
        print(f"| {cls.name} | {r['setup_s']:.2f} | {r['compile_s'] * 1e3:.1f} | {r[1] * 1e3:.3f} | "
              f"{100 * r[1] / step[1]:.1f} | {r[8] * 1e3:.3f} | {100 * r[8] / step[8]:.1f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
