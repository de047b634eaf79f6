"""The cutover window of `vector-bridge migrate` on a real stack (Chroma, our server, Open WebUI):

N collections shaped as Open WebUI writes them (MiniLM vectors, `embedding_config` in every chunk) move to the
hybrid model and back (`--rollback`), each time with Open WebUI's embedding model switched through its admin
API. The window is the time from the first collection rename to Open WebUI's switch: while it lasts, a query
can meet a collection of the other model. Goal: under a second for 100 collections.

    python bench/cutover.py --collections 100 --json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, free_port, running  # noqa: E402

from config import load_settings  # noqa: E402
from vector_bridge.embeddings import EmbeddingsClient  # noqa: E402
from vector_bridge.migrate import migrate_store, roll_back  # noqa: E402
from vector_bridge.openwebui import OpenWebUIClient  # noqa: E402
from vector_bridge.stack import chroma_service, embed_service, openwebui_service  # noqa: E402
from vector_bridge.store import connect  # noqa: E402

SOURCE, TARGET = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-hybrid"


def abstracts(count: int) -> list[str]:
    texts = []
    with (EVAL / "scifact" / "corpus.jsonl").open() as corpus:
        for line in corpus:
            doc = json.loads(line)
            texts.append(f"{doc['title']}\n{doc['text']}")
            if len(texts) == count:
                return texts
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--collections", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=3, help="chunks per collection")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(port=free_port(), chroma_port=free_port(), chroma_path=root / "chroma",
                                 log_dir=root / "logs", openwebui_data=root / "open-webui", state_dir=root / "state",
                                 openwebui_url=f"http://127.0.0.1:{free_port()}")
        with ExitStack() as services:
            for service in (chroma_service(settings), embed_service(settings, None), openwebui_service(settings)):
                services.enter_context(running(service))
            webui = OpenWebUIClient(settings.openwebui_url)
            webui.sign_up("Bench", "bench@example.com", secrets.token_urlsafe(16))
            webui.apply_embedding_config(settings, SOURCE)
            client, embeddings = connect(settings), EmbeddingsClient(settings)
            texts = abstracts(args.chunks)
            vectors = embeddings.embed(SOURCE, [text.replace("\n", " ") for text in texts], "document")
            config = repr({"engine": "openai", "model": SOURCE})
            for _ in range(args.collections):
                client.create_collection(f"file-{uuid.uuid4()}", metadata={"hnsw:space": "cosine"}).add(
                    ids=[str(uuid.uuid4()) for _ in texts], documents=texts, embeddings=vectors,
                    metadatas=[{"name": "abstract.txt", "embedding_config": config} for _ in texts])

            def switch(model: str) -> None:
                webui.apply_embedding_config(settings, model)

            forward = migrate_store(client, embeddings, TARGET, default_model=SOURCE, switch=switch).cutover
            back = roll_back(client, embeddings, TARGET, switch=switch).cutover

    line = {"collections": args.collections, "chunks_per_collection": args.chunks,
            "migrate": {key: getattr(forward, key) for key in ("window_seconds", "renames_seconds", "switch_seconds")},
            "rollback": {key: getattr(back, key) for key in ("window_seconds", "renames_seconds", "switch_seconds")}}
    print("| cutover | collections | window | renames | Open WebUI switch |\n| --- | ---: | ---: | ---: | ---: |")
    for name in ("migrate", "rollback"):
        step = line[name]
        print(f"| {name} | {args.collections} | {step['window_seconds'] * 1000:.0f} ms | "
              f"{step['renames_seconds'] * 1000:.0f} ms | {step['switch_seconds'] * 1000:.0f} ms |")
    if args.json:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
