"""LangChain provider for quantllm: ``QuantLLM`` (alias ``WeightOnlyQuantPipeline``) and ``ChatQuant``."""
from .chat_models import ChatQuant
from .llms import QuantLLM, WeightOnlyQuantPipeline

__all__ = ["ChatQuant", "QuantLLM", "WeightOnlyQuantPipeline"]
