"""Constrained decoding in the engine, on a tiny random model (whose free output is noise, so anything
well-formed in a constrained row came from the mask)."""
import json
import re
import sys

import pytest

pytest.importorskip("llguidance")

import quant_core.constrained as constrained  # noqa: E402
from quant_core.constrained import Constraint, bounded_strings, closed_objects, grammars_for  # noqa: E402
from quant_core.engine import GenerationEngine, GenerationParams  # noqa: E402
from quant_core.errors import ConfigError, MissingExtraError  # noqa: E402
from quant_core.testing import byte_tokenizer, tiny_llama_lm  # noqa: E402

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}, "pet": {"enum": ["cat", "dog"]}},
          "required": ["n", "ok", "pet"], "additionalProperties": False}
REGEX = r"[0-9]{3}-[a-z]{2}"
YES_NO = 'root ::= "yes" | "no"'
PARAMS = GenerationParams(max_new_tokens=40)


@pytest.fixture(scope="module")
def engine():
    return GenerationEngine(tiny_llama_lm(), byte_tokenizer())


def forward_batches(engine, monkeypatch):
    sizes, forward = [], engine.model.forward

    def counted(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)
    monkeypatch.setattr(engine.model, "forward", counted)
    return sizes


def test_rows_with_and_without_constraints_share_one_batch(engine, monkeypatch):
    prompts = ["alpha", "beta", "gamma", "delta"]
    free = engine.generate(prompts[1:2], PARAMS)[0].text
    sizes = forward_batches(engine, monkeypatch)
    outs = engine.generate(prompts, PARAMS, [Constraint.json_schema(SCHEMA), None, Constraint.regex(REGEX),
                                             Constraint.grammar(YES_NO)])
    assert set(sizes) == {4}  # one batch of four rows at every step
    value = json.loads(outs[0].text)
    assert set(value) == {"n", "ok", "pet"} and 0 <= value["n"] <= 99 and value["pet"] in ("cat", "dog")
    assert outs[0].finish_reason == "eos"  # the grammar was complete, so only the end token was left
    assert outs[1].text == free  # a free row is untouched by its neighbours' masks
    assert re.fullmatch(REGEX, outs[2].text) and outs[3].text in ("yes", "no")


def test_free_text_of_the_random_model_would_not_match(engine):
    # the premise of the test above: without the mask, this model writes noise
    text = engine.generate(["alpha"], PARAMS)[0].text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_stream_matches_generate_under_a_constraint(engine):
    c = Constraint.regex(REGEX)
    assert "".join(engine.stream("gamma", PARAMS, c)) == engine.generate(["gamma"], PARAMS, c)[0].text


def test_one_constraint_applies_to_every_prompt(engine):
    outs = engine.generate(["a", "b"], PARAMS, Constraint.grammar(YES_NO))
    assert all(o.text in ("yes", "no") for o in outs)


def test_vocabulary_compiled_once_per_tokenizer(monkeypatch):
    calls = []
    real = constrained.TokenizerGrammars.__init__

    def counting(self, *args, **kwargs):
        calls.append(args)
        real(self, *args, **kwargs)
    monkeypatch.setattr(constrained.TokenizerGrammars, "__init__", counting)
    tokenizer = byte_tokenizer()
    first, second = GenerationEngine(tiny_llama_lm(), tokenizer), GenerationEngine(tiny_llama_lm(1), tokenizer)
    first.generate(["x"], GenerationParams(max_new_tokens=3), Constraint.regex("[a-z]+"))
    second.generate(["y"], GenerationParams(max_new_tokens=3), Constraint.json_object())
    assert len(calls) == 1
    assert grammars_for(tokenizer, 259, 2) is grammars_for(tokenizer, 259, 2)


@pytest.mark.parametrize("bad, message", [
    (Constraint.json_schema({"type": "objekt"}), "cannot be compiled"),
    (Constraint.json_schema({"type": "string", "pattern": "(?=a)b"}), "look-around"),
    (Constraint.regex("("), "unclosed group"),
    (Constraint.grammar("root ::= missing"), "missing"),
])
def test_uncompilable_constraints_fail_before_any_forward(engine, monkeypatch, bad, message):
    sizes = forward_batches(engine, monkeypatch)
    with pytest.raises(ConfigError, match=message):
        engine.generate(["x"], PARAMS, bad)
    with pytest.raises(ConfigError, match=message):
        bad.check()  # the same answer without a tokenizer, for wrappers that check at construction
    assert sizes == []


def test_bad_constraint_arguments(engine):
    with pytest.raises(ConfigError, match="valid JSON"):
        Constraint.json_schema("{not json")
    with pytest.raises(ConfigError, match="kind"):
        Constraint("xml", "<a/>")
    with pytest.raises(ConfigError, match="one Constraint or a list of 2"):
        engine.generate(["a", "b"], PARAMS, [Constraint.json_object()])
    with pytest.raises(TypeError, match="Constraint"):
        engine.generate(["a"], PARAMS, ["[0-9]+"])


def test_pydantic_model_as_schema():
    pydantic = pytest.importorskip("pydantic")

    class Point(pydantic.BaseModel):
        x: int
    assert json.loads(Constraint.json_schema(Point).source)["properties"]["x"]["type"] == "integer"


def test_closed_objects_only_closes_objects_with_properties():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}},
                                               "free": {"type": "object"}},
              "$defs": {"D": {"properties": {"c": {}}}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["free"]
    assert closed["$defs"]["D"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is left as it was


def test_bounded_strings_only_bounds_free_strings(engine):
    schema = {"type": "object", "properties": {
        "free": {"type": "string"}, "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "short": {"type": "string", "maxLength": 3}, "pet": {"type": "string", "enum": ["cat"]},
        "tags": {"type": "array", "items": {"type": "string"}}}}
    bounded = bounded_strings(schema, 5)
    props = bounded["properties"]
    assert props["free"]["maxLength"] == 5 and props["either"]["anyOf"][0]["maxLength"] == 5
    assert props["tags"]["items"]["maxLength"] == 5
    assert props["short"]["maxLength"] == 3 and "maxLength" not in props["pet"]
    assert bounded_strings(schema, None) is schema and "maxLength" not in schema["properties"]["free"]
    text = engine.generate(["x"], PARAMS, Constraint.json_schema({"type": "string", "maxLength": 5}))[0].text
    assert len(json.loads(text)) <= 5


def test_properties_come_in_the_schema_order(engine):
    schema = {"type": "object", "properties": {"zeta": {"type": "boolean"}, "alpha": {"type": "boolean"}},
              "required": ["zeta", "alpha"], "additionalProperties": False}
    text = engine.generate(["x"], PARAMS, Constraint.json_schema(schema))[0].text
    assert text.index('"zeta"') < text.index('"alpha"')


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(MissingExtraError, match=r"quantllm\[structured\]"):
        Constraint.json_object().check()
    with pytest.raises(ImportError):  # also an ImportError, for callers who catch that
        constrained.require_library()
