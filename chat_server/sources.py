"""Sources in the forms clients understand: Open WebUI's citation events, and a plain list for the rest."""

from __future__ import annotations

from typing import Any

from chat_server.retrieval import Source
from chat_server.schemas import SourceOut


def sources_field(sources: list[Source]) -> list[dict[str, Any]]:
    """The documented `sources` extension: one entry per chunk that reached the prompt, numbered as in it."""
    return [SourceOut(number=n, knowledge_id=s.knowledge.id, knowledge_name=s.knowledge.name, name=s.name,
                      text=s.text, score=s.score, metadata=s.metadata).model_dump()
            for n, s in enumerate(sources, 1)]


def openwebui_citations(sources: list[Source]) -> list[dict[str, Any]]:
    """Open WebUI's citation shape (the data of a "source" event, and of a message's ``sources``): one per file,
    its chunks and their scores together."""
    by_file: dict[tuple[str, str], list[Source]] = {}
    for source in sources:
        by_file.setdefault((source.knowledge.id, source.name), []).append(source)
    citations = []
    for (knowledge_id, name), chunks in by_file.items():
        file_id = chunks[0].metadata.get("file_id")
        citations.append({
            "source": {"id": file_id or knowledge_id, "name": name},
            "document": [chunk.text for chunk in chunks],
            "metadata": [{"source": name, "name": name, **({"file_id": file_id} if file_id else {}),
                          **({"page": c.metadata["page"]} if "page" in c.metadata else {})} for c in chunks],
            "distances": [chunk.score for chunk in chunks]})
    return citations
