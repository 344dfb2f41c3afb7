"""Standard-suite bookkeeping: which tests of ChatModelIntegrationTests are expected to fail (and
why), and which subset runs in CI unless QUANTLLM_FULL_STANDARD_SUITE=1."""
import os

import pytest

MEDIA = "ChatQuant is text-only: image, audio and PDF content blocks are refused with a ValueError"

# What the 135M model itself does, not a missing feature: not strict, a larger model passes.
MODEL_LIMITS = {
    "test_agent_loop": "under tool_choice='auto' SmolLM2-135M int4 answers 'What is the weather in San Francisco, "
                       "CA?' in text (its first token starts a tool call with probability 0.1 %); forced calls "
                       "(tool_choice='any' or a name) are valid every time",
    "test_unicode_tool_call_integration": "SmolLM2-135M int4 makes a valid call with customer_name 'Hello Group' "
                                          "(the English gloss in the prompt) instead of '你好啊集团'; ChatQuant keeps "
                                          "non-ASCII arguments unescaped (test_tools.py checks it)",
    "test_json_mode": "json_mode enforces JSON, not keys: SmolLM2-135M int4 wrote {\"setup\": \"The cat was a cat, "
                      "and the cat was a cat, ...\"} (valid JSON, the string cut at max_string_chars) with no "
                      "punchline, so Joke fails to validate; method='json_schema' (the default) passes",
}

EXPECTED_FAILURES = {
    "test_pdf_inputs": MEDIA, "test_audio_inputs": MEDIA, "test_image_inputs": MEDIA,
    "test_image_tool_message": MEDIA, "test_pdf_tool_message": MEDIA, "test_anthropic_inputs": MEDIA,
}

# Run in CI: one test per entry point of the model, and the tool-calling and structured-output ones.
CI_SUBSET = {
    "test_invoke", "test_ainvoke", "test_stream", "test_batch", "test_conversation",
    "test_usage_metadata", "test_usage_metadata_streaming", "test_stop_sequence",
    "test_tool_calling", "test_tool_choice", "test_structured_output", "test_json_mode", "test_agent_loop",
} | set(EXPECTED_FAILURES)  # the expected failures are refused before any generation: cheap

FULL = os.environ.get("QUANTLLM_FULL_STANDARD_SUITE") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "StandardIntegration" not in item.nodeid:
            continue
        name = item.originalname or item.name
        if name in EXPECTED_FAILURES:
            item.add_marker(pytest.mark.xfail(reason=EXPECTED_FAILURES[name], strict=True))
        elif name in MODEL_LIMITS:
            item.add_marker(pytest.mark.xfail(reason=MODEL_LIMITS[name], strict=False))
        elif not FULL and name not in CI_SUBSET:
            item.add_marker(pytest.mark.skip(reason="outside the CI subset of the standard suite; "
                                                    "QUANTLLM_FULL_STANDARD_SUITE=1 runs all of it"))
