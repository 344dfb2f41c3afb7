"""``ChatQuant.with_structured_output``: a schema -> a runnable whose replies are parsed into it.

Every method constrains the reply (quant_core.constrained), so the parsed output always validates against
the schema's JSON form; a Pydantic model's own validators (beyond JSON schema) can still refuse a value,
which ``include_raw=True`` reports as the parsing error.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from quant_core.constrained import Constraint, closed_objects, require_library
from quant_core.errors import ConfigError, UnknownSettingError

METHODS = ("json_schema", "function_calling", "json_mode")


def structured_output(chat, schema: dict | type | None, *, method: str, include_raw: bool,
                      strict: bool | None = None, **kwargs: Any) -> Runnable:
    """See ``ChatQuant.with_structured_output``; every argument is checked before any model is loaded."""
    if kwargs:
        raise UnknownSettingError(f"with_structured_output got unknown arguments {sorted(kwargs)}; "
                                  f"it takes schema, method, include_raw and strict")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if schema is None and method != "json_mode":
        raise ConfigError(f"method={method!r} needs a schema (a Pydantic class, TypedDict or JSON schema dict)")
    require_library()
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    tracing = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
    if method == "function_calling":
        llm, parser = _function_calling(chat, schema, pydantic, tracing)
    else:
        json_schema = _json_schema(schema) if schema is not None else None
        if method == "json_schema":
            Constraint.json_schema(closed_objects(json_schema)).check()
            response_format = {"type": "json_schema", "json_schema": {"name": json_schema.get("title", "output"),
                                                                      "schema": json_schema}}
        else:
            response_format = {"type": "json_object"}
        llm = chat.bind(response_format=response_format, ls_structured_output_format=tracing)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
    return _with_raw(llm, parser) if include_raw else llm | parser


def _json_schema(schema) -> dict:
    if isinstance(schema, dict) and not {"title", "name", "function"} & set(schema):
        return dict(schema)  # a plain JSON schema: LangChain's converter wants a title to name a function
    try:
        return convert_to_json_schema(schema)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read {schema!r} as a schema (use a Pydantic class, TypedDict or JSON schema "
                          f"dict): {exc}") from exc


def _function_calling(chat, schema, pydantic: bool, tracing: dict):
    try:
        spec = convert_to_openai_tool(schema)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot use {schema!r} as a tool schema: {exc}") from exc
    name = spec["function"]["name"]
    # bind_tools insists on descriptions (they tell a model when to call a tool); here the call is forced
    spec["function"]["description"] = spec["function"].get("description") or f"Reply as a {name}."
    llm = chat.bind_tools([spec], tool_choice=name, parallel_tool_calls=False, ls_structured_output_format=tracing)
    if pydantic:
        return llm, PydanticToolsParser(tools=[schema], first_tool_only=True)
    return llm, JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)


def _with_raw(llm: Runnable, parser) -> Runnable:
    """``{"raw": message, "parsed": ..., "parsing_error": ...}``, as LangChain's chat models return it."""
    parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    give_up = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parse.with_fallbacks([give_up], exception_key="parsing_error")
