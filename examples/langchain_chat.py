"""Chat with an int4 SmolLM2-135M-Instruct through LangChain: messages through its chat
template, a streamed reply, token usage, and a stop sequence.

    python examples/langchain_chat.py [MODEL]
"""
import sys

from langchain_core.messages import HumanMessage, SystemMessage

from langchain_quant import ChatQuant
from quant_core import QuantConfig

model = sys.argv[1] if len(sys.argv) > 1 else None  # None: the embedded SmolLM2-135M-Instruct
chat = ChatQuant(model=model, quantization_config=QuantConfig(weight_dtype="int4", group_size=128),
                 max_tokens=48)

messages = [SystemMessage("You are a concise assistant."),
            HumanMessage("Give me two tips for learning a new language.")]
reply = chat.invoke(messages)
print("reply:", reply.content)
print("usage:", reply.usage_metadata, "finish:", reply.response_metadata["finish_reason"])

print("stream: ", end="", flush=True)
for chunk in chat.stream([HumanMessage("What is the capital of France?")]):
    print(chunk.content, end="", flush=True)
print()

short = chat.bind(stop=["."]).invoke([HumanMessage("Describe the sea in three sentences.")])
print("stop at '.':", short.content, "|", short.response_metadata["finish_reason"])
