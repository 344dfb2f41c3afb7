"""The local RAG pipeline: bad input fails before any model loads; on SmolLM2 (slow) the retrieved
source of each example question is the document holding its answer, and the answer is text."""
import copy
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core", reason="needs the llamaindex extra: pip install '.[llamaindex]'")

from llama_index.core.schema import NodeWithScore, TextNode  # noqa: E402

from llamaindex_quant.rag import load_documents, qa_messages  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_missing_or_empty_documents_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / "nowhere")
    (tmp_path / "notes.md").write_text("not indexed")
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        load_documents(tmp_path)


def test_documents_are_loaded_with_their_file_names(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    (tmp_path / "README.md").write_text("ignored")
    docs = load_documents(tmp_path)
    assert sorted(d.metadata["file_name"] for d in docs) == ["a.txt", "b.txt"]


def test_shipped_documents_hold_the_answers_to_the_shipped_questions():
    for q in json.loads((DATA / "questions.json").read_text()):
        assert q["answer_contains"] in (DATA / q["source"]).read_text()


def test_qa_prompt_carries_context_and_question():
    node = NodeWithScore(node=TextNode(text="The line is 42 kilometres long."), score=0.9)
    messages = qa_messages("How long is it?", [node])
    text = "\n".join(m.content for m in messages)
    assert "42 kilometres" in text and "How long is it?" in text
    assert messages[0].role.value == "system"


def test_example_rejects_a_missing_folder_before_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the example sets it on import: keep it out of other tests
    sys.path.insert(0, str(DATA.parent))
    try:
        import llamaindex_rag
    finally:
        sys.path.remove(str(DATA.parent))
    monkeypatch.setattr("llamaindex_quant.QuantLlamaLLM", None)  # would fail loudly if reached
    with pytest.raises(FileNotFoundError, match="does not exist"):
        llamaindex_rag.main(["--docs", str(tmp_path / "missing")])


def test_query_engine_runs_on_the_llm_plain_and_streaming(tmp_path, make_tiny_tokenizer, make_tiny_model):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    from llamaindex_quant import QuantLlamaLLM

    tokenizer = make_tiny_tokenizer()
    llm = QuantLlamaLLM.from_model(make_tiny_model(len(tokenizer), max_positions=1024), tokenizer,
                                   max_new_tokens=4)
    index = VectorStoreIndex.from_documents([Document(text="the quick brown fox")], embed_model=MockEmbedding(embed_dim=8))
    response = index.as_query_engine(llm=llm).query("what jumps?")
    assert isinstance(response.response, str) and response.response.strip()
    assert [n.node.get_content() for n in response.source_nodes] == ["the quick brown fox"]
    streamed = index.as_query_engine(llm=llm, streaming=True).query("what jumps?")
    assert "".join(streamed.response_gen).strip() == response.response.strip()  # same greedy answer


@pytest.mark.slow
def test_rag_on_int4_smollm2_retrieves_the_answering_document(smollm2, monkeypatch):
    from llamaindex_quant import QuantLlamaLLM
    from llamaindex_quant.rag import answer_questions, build_index, local_embed_model
    from quant_core import QuantConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # local_embed_model sets it: keep it out of other tests
    model, tokenizer = smollm2
    llm = QuantLlamaLLM.from_model(copy.deepcopy(model), tokenizer,  # the fixture is shared: quantize a copy
                                   QuantConfig(weight_dtype="int4", group_size=128), max_new_tokens=8)
    index = build_index(load_documents(DATA), local_embed_model())
    cases = json.loads((DATA / "questions.json").read_text())
    answers = answer_questions(llm, index, [c["question"] for c in cases], top_k=1)
    for case, answer in zip(cases, answers):
        assert answer.source_files == [case["source"]], answer.question
        assert answer.text.strip() and answer.completion_tokens >= 1
