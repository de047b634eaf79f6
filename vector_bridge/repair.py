"""Chunks a Knowledge base's collection holds for files it no longer lists.

Open WebUI 0.12.4 can leave them behind when Chroma or the embeddings server dies while it adds a file to a
Knowledge base: the chunks are stored, the file is not linked. They are found by retrieval, and a second
upload of the same file is refused as "Duplicate content detected". Removing a file deletes its chunks by
``file_id``, so a chunk whose ``file_id`` names no listed file belongs to nothing. Run it while nobody is
adding files to that Knowledge base: a file being added has its chunks stored a moment before its link.
"""

from __future__ import annotations

from chromadb.api.models.Collection import Collection

from vector_bridge.shadow import all_ids
from vector_bridge.store import METADATA_PAGE


def unlinked_chunks(collection: Collection, linked_file_ids: set[str]) -> list[str]:
    """Ids of chunks that name a file (``file_id``) that is not one of ``linked_file_ids``."""
    ids = all_ids(collection)
    found = []
    for start in range(0, len(ids), METADATA_PAGE):
        page = collection.get(ids=ids[start:start + METADATA_PAGE], include=["metadatas"])
        found += [chunk_id for chunk_id, metadata in zip(page["ids"], page["metadatas"] or [])
                  if (metadata or {}).get("file_id") and metadata["file_id"] not in linked_file_ids]
    return found


def remove_unlinked_chunks(collection: Collection, linked_file_ids: set[str]) -> int:
    stray = unlinked_chunks(collection, linked_file_ids)
    for start in range(0, len(stray), METADATA_PAGE):
        collection.delete(ids=stray[start:start + METADATA_PAGE])
    return len(stray)
