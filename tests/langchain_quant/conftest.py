"""Standard-suite bookkeeping: which tests of ChatModelIntegrationTests are expected to fail (and
why), and which subset runs in CI unless QUANTLLM_FULL_STANDARD_SUITE=1."""
import os

import pytest

TOOLS = "ChatQuant does not implement tool calling (bind_tools raises NotImplementedError)"
STRUCTURED = "ChatQuant does not implement structured output or JSON mode (they need tool calling)"
MEDIA = "ChatQuant is text-only: image, audio and PDF content blocks are refused with a ValueError"

EXPECTED_FAILURES = {
    "test_tool_calling": TOOLS, "test_tool_calling_async": TOOLS, "test_bind_runnables_as_tools": TOOLS,
    "test_tool_message_histories_string_content": TOOLS, "test_tool_message_histories_list_content": TOOLS,
    "test_tool_choice": TOOLS, "test_tool_calling_with_no_arguments": TOOLS,
    "test_tool_message_error_status": TOOLS, "test_agent_loop": TOOLS, "test_unicode_tool_call_integration": TOOLS,
    "test_structured_few_shot_examples": TOOLS,
    "test_structured_output": STRUCTURED, "test_structured_output_async": STRUCTURED,
    "test_structured_output_pydantic_2_v1": STRUCTURED, "test_structured_output_optional_param": STRUCTURED,
    "test_json_mode": STRUCTURED,
    "test_pdf_inputs": MEDIA, "test_audio_inputs": MEDIA, "test_image_inputs": MEDIA,
    "test_image_tool_message": MEDIA, "test_pdf_tool_message": MEDIA, "test_anthropic_inputs": MEDIA,
}

# Run in CI (about a quarter of the suite's generations): one test per entry point of the model.
CI_SUBSET = {
    "test_invoke", "test_ainvoke", "test_stream", "test_batch", "test_conversation",
    "test_usage_metadata", "test_usage_metadata_streaming", "test_stop_sequence",
} | set(EXPECTED_FAILURES)  # the expected failures are refused before any generation: cheap

FULL = os.environ.get("QUANTLLM_FULL_STANDARD_SUITE") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "StandardIntegration" not in item.nodeid:
            continue
        name = item.originalname or item.name
        if name in EXPECTED_FAILURES:
            item.add_marker(pytest.mark.xfail(reason=EXPECTED_FAILURES[name], strict=True))
        elif not FULL and name not in CI_SUBSET:
            item.add_marker(pytest.mark.skip(reason="outside the CI subset of the standard suite; "
                                                    "QUANTLLM_FULL_STANDARD_SUITE=1 runs all of it"))
