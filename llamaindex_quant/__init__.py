"""LlamaIndex provider for quantllm (QuantLlamaLLM)."""
