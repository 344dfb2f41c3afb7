"""Constrained decoding: a grammar per row decides which tokens the engine may pick next.

A ``Constraint`` names what a completion must match: a JSON schema, any JSON object, a regular
expression, or a context-free grammar (llama.cpp's GBNF or llguidance's Lark syntax). The engine
asks ``matcher_for`` for one matcher per constrained row; before each step it writes every row's
allowed tokens into one bitmask, and the other logits of that row become -inf.

Built on llguidance (the optional extra ``structured``): the one library of the four measured
(xgrammar, llguidance, outlines-core, lm-format-enforcer; ``benchmarks/constrained_libraries.py``)
that is a single dependency-free wheel, reads Hugging Face fast tokenizers directly, and compiles
JSON schemas, regexes and context-free grammars, at well under a millisecond per row and token.

Compiling a tokenizer's vocabulary takes about a second, so it is done once per tokenizer and kept
beside it; a compiled grammar is kept per tokenizer too, and each row gets a copy of its matcher.
"""
from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError, MissingExtraError

EXTRA = "structured"
LIBRARY = "llguidance"
KINDS = ("json_schema", "regex", "grammar")
# Compact separators and no free whitespace: a model cannot stall by emitting blank space forever,
# and the text still reads as ordinary JSON.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_GRAMMARS_PER_TOKENIZER = 64


def require_library():
    """The llguidance module, or an error that says which extra to install."""
    try:
        import llguidance
        import llguidance.hf
    except ImportError as exc:
        raise MissingExtraError(f"constrained decoding (tool calling, structured output, grammar=) needs "
                                f"{LIBRARY}: pip install 'quantllm[{EXTRA}]' (or pip install {LIBRARY})") from exc
    return llguidance


@dataclass(frozen=True)
class Constraint:
    """What a completion must match. Build one with ``json_schema``, ``json_object``, ``regex`` or ``grammar``."""
    kind: str
    source: str  # JSON text of the schema, the regex, or the grammar text

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"constraint kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(f"a {self.kind} constraint needs a non-empty text")

    @classmethod
    def json_schema(cls, schema: dict | str | type) -> "Constraint":
        """A JSON schema (dict or its JSON text) or a Pydantic model class."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"json_schema is not valid JSON ({exc}); pass a dict or a JSON text") from exc
        if not isinstance(schema, dict):
            raise ConfigError(f"json_schema must be a dict, a JSON text or a Pydantic model class, "
                              f"not {type(schema).__name__}")
        # key order kept: llguidance emits properties in the schema's order
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def json_object(cls) -> "Constraint":
        """Any JSON object (JSON mode)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        return cls("regex", pattern)

    @classmethod
    def grammar(cls, text: str) -> "Constraint":
        """A GBNF grammar (llama.cpp: ``root ::= ...``) or a Lark grammar (llguidance: ``start: ...``)."""
        return cls("grammar", text)

    def llguidance_grammar(self) -> str:
        """This constraint in llguidance's grammar format (no tokenizer needed; checked when compiled)."""
        llg = require_library()
        if self.kind == "json_schema":
            schema = json.loads(self.source)
            return llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        if self.kind == "regex":
            return llg.LLMatcher.grammar_from_regex(self.source)
        try:
            return llg.grammar_from("grammar", self.source)
        except ValueError as exc:
            raise ConfigError(f"the grammar could not be read: {exc}") from exc


    def check(self) -> "Constraint":
        """Raise ConfigError now if llguidance cannot compile this (no tokenizer or model needed)."""
        llg = require_library()
        error = llg.LLMatcher.validate_grammar(self.llguidance_grammar())
        if error:
            raise ConfigError(f"the {self.kind.replace('_', ' ')} cannot be compiled for constrained decoding: "
                              f"{error.strip()}")
        return self


def closed_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object with ``properties`` that leaves it
    unsaid (a copy; a bare ``{"type": "object"}`` stays free).

    Every value this allows also validates against the original; it keeps a small model from inventing
    extra keys (JSON schema allows them by default, and a model may then ramble until its token budget
    runs out mid-value)."""
    if isinstance(schema, list):
        return [closed_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed_objects(v) if k in _SUBSCHEMA_KEYS else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    return out


_SUBSCHEMA_KEYS = ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not", "if", "then", "else")
_STRING_LIMITS = ("maxLength", "enum", "const", "pattern", "format")


def bounded_strings(schema: Any, max_chars: int | None) -> Any:
    """``schema`` with ``maxLength: max_chars`` on every string that sets no limit of its own (a copy).

    A small model decoding greedily can repeat a phrase inside a string until its token budget ends,
    leaving the JSON unfinished; a bound lets the grammar close the string in time. Every value this
    allows also validates against the original."""
    if max_chars is None:
        return schema
    if isinstance(schema, list):
        return [bounded_strings(s, max_chars) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded_strings(v, max_chars) if k in _SUBSCHEMA_KEYS else v for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {name: bounded_strings(sub, max_chars) for name, sub in out[key].items()}
    kind = out.get("type")
    if (kind == "string" or (isinstance(kind, list) and "string" in kind)) and not set(_STRING_LIMITS) & set(out):
        out["maxLength"] = max_chars
    return out


def as_constraint(value: Any, kind: str = "json_schema") -> Constraint | None:
    """``value`` as a Constraint: None, a Constraint, or the source for ``kind`` (a schema for json_schema)."""
    if value is None or isinstance(value, Constraint):
        return value
    if kind == "json_schema":
        return Constraint.json_schema(value)
    if not isinstance(value, str):
        raise ConfigError(f"{kind} must be a string, not {type(value).__name__}")
    return Constraint.regex(value) if kind == "regex" else Constraint.grammar(value)


class TokenizerGrammars:
    """One tokenizer's compiled vocabulary and its compiled grammars (most recent ``_GRAMMARS_PER_TOKENIZER``)."""

    def __init__(self, tokenizer, vocab_size: int, eos_id: int):
        llg = require_library()
        vocab_size = max(vocab_size, len(tokenizer))
        try:
            self.ll_tokenizer = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_id)
        except ValueError as exc:  # llguidance reads only fast (Rust-backed) tokenizers
            raise ConfigError(f"constrained decoding needs a fast tokenizer; {type(tokenizer).__name__} is not "
                              f"one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)") from exc
        self.vocab_size, self.eos_id = vocab_size, eos_id
        self._matchers: OrderedDict[Constraint, Any] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, constraint: Constraint):
        """A fresh matcher for one row (a copy of the compiled one); ConfigError if it does not compile."""
        with self._lock:
            compiled = self._matchers.get(constraint)
            if compiled is None:
                compiled = self._compile(constraint)
                self._matchers[constraint] = compiled
                if len(self._matchers) > _GRAMMARS_PER_TOKENIZER:
                    self._matchers.popitem(last=False)
            self._matchers.move_to_end(constraint)
            return compiled.deep_copy()

    def _compile(self, constraint: Constraint):
        llg = require_library()
        grammar = constraint.llguidance_grammar()
        error = llg.LLMatcher.validate_grammar(grammar, self.ll_tokenizer)
        if error:
            raise ConfigError(f"the {constraint.kind.replace('_', ' ')} cannot be compiled for constrained "
                              f"decoding: {error.strip()}")
        matcher = llg.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConfigError(f"the {constraint.kind.replace('_', ' ')} cannot be compiled: {matcher.get_error()}")
        return matcher


_BY_TOKENIZER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def grammars_for(tokenizer, vocab_size: int, eos_id: int) -> TokenizerGrammars:
    """The one ``TokenizerGrammars`` of ``tokenizer`` for ``vocab_size`` logits and end token ``eos_id``
    (its vocabulary compiled on the first call only)."""
    with _REGISTRY_LOCK:
        per_setting = _BY_TOKENIZER.setdefault(tokenizer, {})
        grammars = per_setting.get((vocab_size, eos_id))
        if grammars is None:
            grammars = per_setting[(vocab_size, eos_id)] = TokenizerGrammars(tokenizer, vocab_size, eos_id)
        return grammars


class BatchMask:
    """The per-row masks of one batch: rows with a matcher are constrained, rows without are left free."""

    def __init__(self, matchers: list, vocab_size: int, eos_id: int):
        self.matchers, self.eos_id = matchers, eos_id
        self.rows = [i for i, m in enumerate(matchers) if m is not None]
        self.bitmask = torch.full((len(self.rows), (vocab_size + 31) // 32), -1, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)

    def apply(self, logits: torch.Tensor, finished: list[bool]) -> torch.Tensor:
        """``logits`` with every token a constrained row may not take next set to -inf (a new tensor:
        the steppers' logits may be inference tensors, which cannot be written in place)."""
        live = [(k, i) for k, i in enumerate(self.rows) if not finished[i]]
        for k, i in live:
            matcher = self.matchers[i]
            row = self.bitmask[k]
            matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
            if matcher.is_error():  # should not happen; end the row rather than pick from nothing
                row.zero_()
                bit = 1 << (self.eos_id % 32)
                row[self.eos_id // 32] = bit - (1 << 32) if bit >= 1 << 31 else bit  # as a signed int32
        if not live:
            return logits
        picked = [k for k, _ in live]
        bits = (self.bitmask[picked].unsqueeze(-1) >> self._bits) & 1
        allowed = torch.ones(logits.shape, dtype=torch.bool)  # free rows (and finished ones) keep every token
        allowed[[i for _, i in live]] = bits.view(len(picked), -1)[:, :logits.shape[1]].bool()
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    def advance(self, tokens: list[int], finished_before: list[bool]) -> None:
        """Feed each constrained row's chosen token to its matcher."""
        for i in self.rows:
            if not finished_before[i]:
                self.matchers[i].consume_token(tokens[i])
