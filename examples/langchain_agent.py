"""An offline tool-calling agent on int4 SmolLM2-135M-Instruct: a calculator and a lookup over
examples/data/, through ChatQuant.bind_tools (constrained decoding: every call is valid JSON for a real tool).

The loop is LangChain's plain tool-calling loop: the model picks a tool (forced on the first turn, since a
135M model otherwise often answers from memory), the tool runs, its result goes back as a ToolMessage,
and the model answers in text. Needs the langchain and structured extras (./scripts/setup langchain,structured).

    python examples/langchain_agent.py [QUESTION ...]
"""
import ast
import operator
import re
import sys
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

from langchain_quant import ChatQuant
from quant_core import QuantConfig

DATA = Path(__file__).parent / "data"
QUESTIONS = ["What is 17 * 23 + 4?",
             "When was the Harrow Point lighthouse first lit?",
             "How long is the Tidewater Valley Railway?"]
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def arithmetic(node):
    """Evaluate numbers and + - * / ** % only (never Python's eval)."""
    if isinstance(node, ast.Expression):
        return arithmetic(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](arithmetic(node.left), arithmetic(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](arithmetic(node.operand))
    raise ValueError("only numbers and + - * / ** % are allowed")


@tool
def calculator(expression: str) -> str:
    """Compute an arithmetic expression such as 12 * (3 + 4)."""
    try:
        return str(arithmetic(ast.parse(expression, mode="eval")))
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return f"Error: {exc}"


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


@tool
def lookup(topic: str) -> str:
    """Look up a topic in the local notes (lighthouses, railways, baking, bees, instruments)."""
    wanted = words(topic)
    paragraphs = [p.strip() for f in sorted(DATA.glob("*.txt")) for p in f.read_text().split("\n\n") if p.strip()]
    best = max(paragraphs, key=lambda p: (len(wanted & words(p)), len(p)))  # ties: the fuller paragraph, not a title
    return best if wanted & words(best) else "Nothing in the notes about that."


TOOLS = {t.name: t for t in (calculator, lookup)}


def run_agent(chat: ChatQuant, question: str) -> str:
    messages = [SystemMessage("You answer questions with the help of tools. Be brief."), HumanMessage(question)]
    reply = chat.bind_tools(list(TOOLS.values()), tool_choice="any", parallel_tool_calls=False).invoke(messages)
    messages.append(reply)
    for call in reply.tool_calls:
        result = TOOLS[call["name"]].invoke(call)  # a ToolMessage carrying the call's id
        print(f"  tool  {call['name']}({call['args']}) -> {result.content[:100]!r}")
        messages.append(result)
    for bad in reply.invalid_tool_calls:  # cannot happen under the grammar; shown if it ever does
        print(f"  invalid call: {bad}")
    answer = chat.bind_tools(list(TOOLS.values()), tool_choice="none").invoke(messages)
    return answer.content


def main() -> None:
    chat = ChatQuant(quantization_config=QuantConfig(weight_dtype="int4", group_size=128), max_tokens=64)
    for question in sys.argv[1:] or QUESTIONS:
        print(f"Q: {question}")
        print(f"A: {run_agent(chat, question)}\n")


if __name__ == "__main__":
    main()
