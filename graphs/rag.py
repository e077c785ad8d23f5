"""Retrieval-augmented answers over a small shipped corpus (``data/corpus/*.md``).

Two nodes: ``retrieve`` ranks the corpus against the question with BM25 (``rank-bm25``),
keeps the best three documents and announces them to clients as a ``custom`` frame named
``sources`` (through LangGraph's stream writer) before any answer is written; ``answer``
calls the model with the retrieved passages in a system message, and its answer streams
as ``token`` frames.

Registered as ``rag`` in ``agent_server.toml``; the server calls ``make_graph`` with its
chat model (the offline scripted model quotes the question back, which is enough to see
the stream; a real model answers from the passages).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from rank_bm25 import BM25Okapi

ROOT = Path(__file__).parent.parent
CORPUS_DIR = ROOT / "data" / "corpus"
TOP_K = 3

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase words: what BM25 counts."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Document:
    title: str
    path: str
    text: str


def load_corpus(directory: Path = CORPUS_DIR) -> list[Document]:
    """Every markdown file of ``directory``, titled by its first ``# `` heading."""
    documents = []
    for file in sorted(directory.glob("*.md")):
        text = file.read_text(encoding="utf-8")
        title = next(
            (line[2:].strip() for line in text.splitlines() if line.startswith("# ")), file.stem
        )
        path = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
        documents.append(Document(title=title, path=path, text=text))
    return documents


class Retriever:
    """BM25 over whole documents (each is a few paragraphs)."""

    def __init__(self, documents: list[Document]) -> None:
        if not documents:
            raise ValueError("the corpus is empty")
        self.documents = documents
        self.index = BM25Okapi([tokenize(doc.title + "\n" + doc.text) for doc in documents])

    def search(self, query: str, k: int = TOP_K) -> list[tuple[Document, float]]:
        scores = self.index.get_scores(tokenize(query))
        ranked = sorted(zip(self.documents, scores, strict=True), key=lambda pair: -pair[1])
        return [(doc, float(score)) for doc, score in ranked[:k]]


class RagState(MessagesState):
    sources: list[dict[str, Any]]


def make_graph(model: BaseChatModel) -> CompiledStateGraph:
    """Answers questions about agent-server from its documentation (BM25 retrieval)."""
    retriever = Retriever(load_corpus())
    by_path = {doc.path: doc for doc in retriever.documents}

    def retrieve(state: RagState) -> dict[str, Any]:
        question = str(state["messages"][-1].text)
        sources = [
            {"title": doc.title, "path": doc.path, "score": round(score, 3)}
            for doc, score in retriever.search(question)
        ]
        # Clients see the sources (a ``custom`` frame) before the first token of the answer.
        get_stream_writer()({"name": "sources", "data": sources})
        return {"sources": sources}

    async def answer(state: RagState, config: RunnableConfig) -> dict[str, Any]:
        question = str(state["messages"][-1].text)
        passages = "\n\n".join(
            f"[{n}] {source['title']} ({source['path']})\n{by_path[source['path']].text.strip()}"
            for n, source in enumerate(state["sources"], start=1)
        )
        system = SystemMessage(
            "Answer the question using only the passages below, and cite them as [1], [2]..."
            f"\n\n{passages}\n\nQuestion: {question}"
        )
        reply = await model.ainvoke([system, *state["messages"]], config)
        return {"messages": [reply]}

    builder = StateGraph(RagState)
    builder.add_node("retrieve", retrieve)
    builder.add_node("answer", answer)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "answer")
    builder.add_edge("answer", END)
    return builder.compile()
