"""LangChain provider for quantllm (QuantLLM, ChatQuant)."""
