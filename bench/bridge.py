"""Throughput of the vector-bridge tools on a real stack (Chroma, our server, Open WebUI):

  ingest    SciFact abstracts as .txt files into a Knowledge base through Open WebUI's API
            (`vector-bridge ingest`): documents/s and chunks/s
  migrate   that Knowledge base's chunks re-embedded with the hybrid model (`vector-bridge migrate`):
            chunks/s, against the raw model encoding the same texts in-process (the hybrid's dense part)

    python bench/bridge.py --n 300 --json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import free_port, running  # noqa: E402
from embeddings import RawModel  # noqa: E402
from knowledge_upload import write_abstracts  # noqa: E402

from config import load_settings  # noqa: E402
from vector_bridge.embeddings import EmbeddingsClient  # noqa: E402
from vector_bridge.ingest import ingest  # noqa: E402
from vector_bridge.migrate import migrate_store  # noqa: E402
from vector_bridge.openwebui import OpenWebUIClient  # noqa: E402
from vector_bridge.stack import chroma_service, embed_service, openwebui_service  # noqa: E402
from vector_bridge.store import connect  # noqa: E402

TARGET = "all-MiniLM-L6-v2-hybrid"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="abstracts to ingest")
    parser.add_argument("--concurrency", type=int, default=4, help="ingest uploads at once")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "abstracts").mkdir()
        files = write_abstracts(root / "abstracts", args.n)
        settings = load_settings(port=free_port(), chroma_port=free_port(), chroma_path=root / "chroma",
                                 log_dir=root / "logs", openwebui_data=root / "open-webui", state_dir=root / "state",
                                 openwebui_url=f"http://127.0.0.1:{free_port()}")
        with ExitStack() as services:
            for service in (chroma_service(settings), embed_service(settings, None), openwebui_service(settings)):
                services.enter_context(running(service))
            webui = OpenWebUIClient(settings.openwebui_url)
            webui.sign_up("Bench", "bench@example.com", secrets.token_urlsafe(16))

            started = time.perf_counter()
            report = ingest(webui, "bench", files, create=True, concurrency=args.concurrency, progress=False)
            ingest_s = time.perf_counter() - started
            collection = connect(settings).get_collection(report.knowledge_id)
            chunks = collection.count()
            texts = [text.replace("\n", " ") for text in collection.get(include=["documents"])["documents"]]

            started = time.perf_counter()
            migration = migrate_store(connect(settings), EmbeddingsClient(settings), TARGET,
                                      default_model=settings.models[0].id, switch=None, only=[report.knowledge_id])
            [moved] = migration.collections
            migrate_s = time.perf_counter() - started

    raw = RawModel()
    raw.throughput(texts[:64], 16)  # warm-up
    raw_rate = max(raw.throughput(texts, batch).texts_per_s for batch in (8, 16, 32))

    line = {
        "ingest": {"documents": args.n, "failed": report.count("failed"), "chunks": chunks,
                   "seconds": round(ingest_s, 1), "documents_per_s": round(args.n / ingest_s, 2),
                   "chunks_per_s": round(chunks / ingest_s, 2), "concurrency": args.concurrency},
        "migrate": {"chunks": moved.chunks, "to": TARGET, "seconds": round(migrate_s, 1),
                    "chunks_per_s": round(moved.chunks / migrate_s, 1),
                    "raw_model_chunks_per_s": round(raw_rate, 1), "ratio_vs_raw": round(moved.chunks / migrate_s / raw_rate, 3)},
    }
    print("| step | items | seconds | per second | vs raw model |\n| --- | ---: | ---: | ---: | ---: |")
    i, m = line["ingest"], line["migrate"]
    print(f"| ingest through Open WebUI | {i['documents']} documents, {i['chunks']} chunks | {i['seconds']} | "
          f"{i['documents_per_s']} documents, {i['chunks_per_s']} chunks | |")
    print(f"| migrate to {TARGET} | {m['chunks']} chunks | {m['seconds']} | {m['chunks_per_s']} chunks | "
          f"{m['ratio_vs_raw']:.2f} (raw {m['raw_model_chunks_per_s']} chunks/s) |")
    if args.json:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
