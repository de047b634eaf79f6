"""Doctor's rules on given facts (the services are exercised in test_bridge.py): what migrate and restore
leave behind is reported as such, Open WebUI's own kinds of collection are known by their names, and
"delete" is advised only when Open WebUI says the owner is gone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import numpy as np
import psycopg
import pytest

from config import Settings, load_settings
from tests.servers import REPO, free_port
from vector_bridge.doctor import Expected, Facts, Finding, diagnose, pgvector_facts, pgvector_findings
from vector_bridge.pgvector_store import PgvectorStore, vector_literal
from vector_bridge.postgres import pgvector_url, postgres_service
from vector_bridge.openwebui import OpenWebUIError
from vector_bridge.owners import Owners, openwebui_kind, read_owners
from vector_bridge.store import CollectionInfo

URL = "http://127.0.0.1:8080/v1"
HYBRID = "all-MiniLM-L6-v2-hybrid"
MINILM = "all-MiniLM-L6-v2"
USER, GONE_USER = str(uuid.uuid4()), str(uuid.uuid4())
KB, GONE_KB, FILE, GONE_FILE, UNSURE_FILE = (str(uuid.uuid4()) for _ in range(5))
SHA = hashlib.sha256(b"https://example.org/page").hexdigest()


def chunks(name: str, count: int = 4) -> CollectionInfo:
    return CollectionInfo(name, count, 384, {MINILM: count})


def diagnosed(collections: list[CollectionInfo], owners: Owners | None) -> list[Finding]:
    expected = Expected("open-webui", "openai", MINILM, URL, dimension=384)
    return diagnose(Facts(collections, expected, URL, owners))


def by_collection(findings: list[Finding]) -> dict[str | None, list[tuple[str, str]]]:
    found: dict[str | None, list[tuple[str, str]]] = {}
    for finding in findings:
        found.setdefault(finding.collection, []).append((finding.severity, finding.message))
    return found


def test_migrated_collection_its_kept_old_vectors_and_an_unfinished_shadow() -> None:
    hybrid = Expected("open-webui", "openai", HYBRID, URL, dimension=4480)
    found = by_collection(diagnose(Facts([
        CollectionInfo("kb-1", 10, 4480, {HYBRID: 10}),
        CollectionInfo(f"kb-1.pre.{HYBRID}", 10, 384, {MINILM: 10}),
        CollectionInfo("kb-2", 5, 384, {MINILM: 5}),
        CollectionInfo(f"kb-2.to.{HYBRID}", 3, 4480, {HYBRID: 3}),
    ], hybrid, URL, Owners(alive={"kb-1"}, gone=set(), users=set()))))
    assert "kb-1" not in found
    [(severity, message)] = found[f"kb-1.pre.{HYBRID}"]
    assert severity == "info" and "old vectors of kb-1" in message
    [(severity, message)] = found[f"kb-2.to.{HYBRID}"]
    assert severity == "warning" and "has not finished" in message
    # kb-2 itself is still on MiniLM and no name Open WebUI makes: wrong model, wrong size, not Open WebUI's.
    assert sorted(severity for severity, _ in found["kb-2"]) == ["error", "error", "warning"]
    assert None not in found  # no stack-wide problem


def test_open_webui_collection_names_are_recognised() -> None:
    assert openwebui_kind("knowledge-bases") == ("knowledge-bases", None)
    assert openwebui_kind(KB) == ("knowledge", KB)
    assert openwebui_kind(f"file-{FILE}") == ("file", FILE)
    assert openwebui_kind(f"user-memory-{USER}") == ("user-memory", USER)
    # Open WebUI cuts web search names to 63 characters: the user id survives, most of the hash does not.
    assert openwebui_kind(f"web-search-{USER}-{SHA}"[:63]) == ("web-search", USER)
    assert openwebui_kind(f"web-search-{SHA}"[:63]) == ("web-search", None)  # before Open WebUI 0.11
    assert openwebui_kind(SHA[:63]) == ("chat-content", None)  # a URL or YouTube video added to a chat
    assert openwebui_kind(SHA) == ("chat-content", None)  # a pasted text
    assert openwebui_kind("lab-notes") == ("other", None)


def test_delete_is_advised_only_when_open_webui_says_the_owner_is_gone() -> None:
    owners = Owners(alive={KB, f"file-{FILE}"}, gone={GONE_KB, f"file-{GONE_FILE}"}, users={USER})
    names = ["knowledge-bases", KB, GONE_KB, f"file-{FILE}", f"file-{GONE_FILE}", f"file-{UNSURE_FILE}",
             f"user-memory-{USER}", f"user-memory-{GONE_USER}", f"web-search-{USER}-{SHA}"[:63],
             f"web-search-{GONE_USER}-{SHA}"[:63], SHA[:63], SHA, "lab-notes"]
    findings = diagnosed([chunks(name) for name in names], owners)
    found = by_collection(findings)

    for name in ("knowledge-bases", KB, f"file-{FILE}", f"user-memory-{USER}"):
        assert name not in found, name
    for name, owner in ((GONE_KB, "Knowledge base"), (f"file-{GONE_FILE}", "file"),
                        (f"user-memory-{GONE_USER}", "user")):
        [(severity, message)] = found[name]
        assert severity == "warning" and f"no Open WebUI {owner} has id" in message
    [(severity, message)] = found[f"file-{UNSURE_FILE}"]
    assert severity == "info" and "unknown" in message
    [(severity, message)] = found["lab-notes"]
    assert severity == "warning" and "makes no collection of this name" in message
    # Web searches and chat pages: one line each, never one per collection, never "delete".
    assert sorted(message.split(" collections of ")[0] for _, message in found[None]) == ["2", "2"]
    certain = {GONE_KB, f"file-{GONE_FILE}", f"user-memory-{GONE_USER}"}
    assert {f.collection for f in findings if "delete" in f.fix} == certain


def test_without_an_admin_token_nothing_is_called_left_over() -> None:
    names = [GONE_KB, f"file-{GONE_FILE}", f"user-memory-{GONE_USER}", "lab-notes", f"web-search-{SHA}"[:63]]
    findings = diagnosed([chunks(name) for name in names], None)
    assert [(f.severity, f.collection) for f in findings] == [("info", None)]  # the web search summary
    # Without the user list, memories are not judged either.
    assert not diagnosed([chunks(f"user-memory-{GONE_USER}")], Owners(set(), set(), users=None))


def test_interrupted_restores_are_reported_as_such() -> None:
    found = by_collection(diagnosed([chunks(f"file-{FILE}.restoring"), chunks(f"{KB}.replaced")],
                                    Owners({f"file-{FILE}", KB}, set(), {USER})))
    for name in (f"file-{FILE}.restoring", f"{KB}.replaced"):
        [(severity, message)] = found[name]
        assert severity == "warning" and "restore that did not finish" in message


class Directory:
    """Open WebUI as an admin with BYPASS_ADMIN_ACCESS_CONTROL=false sees it: lists miss other users' things."""

    def __init__(self, files: set[str], knowledge: set[str], listed: set[str], failing: set[str]) -> None:
        self._files, self._knowledge, self._listed, self._failing = files, knowledge, listed, failing

    def _lookup(self, existing: set[str], id_: str) -> dict:
        if id_ in self._failing:
            raise OpenWebUIError("500 Internal Server Error", 500)
        if id_ not in existing:
            raise OpenWebUIError("404 Not Found", 404)
        return {"id": id_}

    def list_knowledge(self) -> list[dict]:
        return [{"id": i} for i in self._knowledge & self._listed]

    def files(self) -> list[dict]:
        return [{"id": i} for i in self._files & self._listed]

    def knowledge(self, knowledge_id: str) -> dict:
        return self._lookup(self._knowledge, knowledge_id)

    def file(self, file_id: str) -> dict:
        return self._lookup(self._files, file_id)

    def all_users(self) -> list[dict]:
        return [{"id": USER}]


@pytest.mark.parametrize("listed", [True, False])
def test_owners_are_confirmed_by_id_not_by_possibly_filtered_lists(listed: bool) -> None:
    existing_files, existing_kbs = {FILE, UNSURE_FILE}, {KB}
    directory = Directory(existing_files, existing_kbs, listed=(existing_files | existing_kbs) if listed else set(),
                          failing={UNSURE_FILE} if not listed else set())
    names = [KB, GONE_KB, f"file-{FILE}", f"file-{GONE_FILE}", f"file-{UNSURE_FILE}", f"user-memory-{USER}", "x-y"]
    owners = read_owners(directory, names)
    assert owners.gone == {GONE_KB, f"file-{GONE_FILE}"}
    assert {KB, f"file-{FILE}"} <= owners.alive and owners.users == {USER}
    assert owners.is_left_over(f"file-{UNSURE_FILE}") is (False if listed else None)  # a 500 is not a "gone"
    assert owners.is_left_over(f"user-memory-{GONE_USER}") is True


# On pgvector: the table's facts read from a real PostgreSQL, each case in a schema of its own.

@pytest.fixture(scope="module")
def postgres() -> Iterator[Settings]:
    root = Path(tempfile.mkdtemp(prefix="doctor-pg-"))
    os.chmod(root, 0o711)  # run as root, PostgreSQL's unprivileged user passes through here
    settings = load_settings(postgres_port=free_port(), postgres_path=root / "postgres", state_dir=root / "state",
                             log_dir=root / "logs", port=free_port())  # no embeddings server listens there
    service = postgres_service(settings)
    try:
        service.spawn()
        service.wait_ready()
        yield settings
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


def table_in_schema(settings: Settings, schema: str, column: str | None, rows: int = 0,
                    index: str | None = None) -> str:
    """A document_chunk of ``column`` type in its own schema, ``rows`` unit vectors, then ``index`` built."""
    with psycopg.connect(pgvector_url(settings), autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
        if column:
            connection.execute(f"CREATE TABLE {schema}.document_chunk (id text PRIMARY KEY, vector {column}, "
                               "collection_name text NOT NULL, text text, vmetadata jsonb)")
            dimension = int(column.split("(")[1].rstrip(")"))
            rng = np.random.default_rng(len(schema))
            with connection.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {schema}.document_chunk VALUES (%s, %s, 'kb', 't', %s)",
                                   [(f"c{i}", vector_literal(rng.standard_normal(dimension), dimension),
                                     json.dumps({"embedding_config": repr({"engine": "openai", "model": MINILM})}))
                                    for i in range(rows)])
            if index:
                connection.execute(f"CREATE INDEX idx_document_chunk_vector ON {schema}.document_chunk {index}")
    return f"{pgvector_url(settings)}?options={quote(f'-csearch_path={schema},public', safe='')}"


def pgvector_diagnosis(url: str, dimension: int = 384) -> list[Finding]:
    with PgvectorStore(url) as store:
        facts = pgvector_facts(store)
    return pgvector_findings(facts, Expected("open-webui", "openai", MINILM, URL, dimension=dimension))


@pytest.mark.slow
def test_pgvector_table_findings(postgres: Settings) -> None:
    [missing] = pgvector_diagnosis(table_in_schema(postgres, "no_table", None))
    assert missing.severity == "warning" and "does not exist yet" in missing.message
    assert "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH=384" in missing.fix

    # Open WebUI's hnsw index on a table the model fits: nothing to say.
    good = table_in_schema(postgres, "fits", "vector(384)", 20, "USING hnsw (vector vector_cosine_ops)")
    assert pgvector_diagnosis(good) == []

    # A 768-d model on a 384 table: Open WebUI cuts its vectors.
    [cut] = pgvector_diagnosis(good, dimension=768)
    assert cut.severity == "error" and "cuts every vector" in cut.message and "vector(384)" in cut.message
    assert "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH=768" in cut.fix and "recreated" in cut.fix
    assert "migrate --to-store chroma" in cut.fix and "embedding their files again" in cut.fix
    [cut] = pgvector_diagnosis(good, dimension=3456)
    assert "PGVECTOR_USE_HALFVEC=true" in cut.fix
    # A shorter model is padded: it works, at a cost.
    [padded] = pgvector_diagnosis(good, dimension=256)
    assert padded.severity == "info" and "pads each with zeros" in padded.message and "1.5 times" in padded.message
    assert "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH=256" in padded.fix

    # Above 2,000 dimensions as `vector`: pgvector indexes none of it.
    [long] = pgvector_diagnosis(table_in_schema(postgres, "long", "vector(2500)", 5), dimension=2500)
    assert long.severity == "warning" and "every search scans all 5 chunks" in long.message
    assert "PGVECTOR_USE_HALFVEC=true" in long.fix
    assert pgvector_diagnosis(table_in_schema(postgres, "long_half", "halfvec(2500)", 5,
                                              "USING hnsw (vector halfvec_cosine_ops)"), dimension=2500) == []

    # No index: fine while small; an ivfflat built on a few rows; an index Open WebUI's searches never use.
    [none] = pgvector_diagnosis(table_in_schema(postgres, "no_index", "vector(384)", 30))
    assert none.severity == "info" and "no usable vector index" in none.message and "hnsw" in none.fix
    [early] = pgvector_diagnosis(table_in_schema(postgres, "early_ivfflat", "vector(384)", 30,
                                                 "USING ivfflat (vector vector_cosine_ops) WITH (lists = 100)"))
    assert early.severity == "warning" and "100 lists" in early.message and "30 chunks" in early.message
    assert "REINDEX INDEX idx_document_chunk_vector once the table holds 5000 chunks" in early.fix
    findings = pgvector_diagnosis(table_in_schema(postgres, "l2", "vector(384)", 30,
                                                  "USING hnsw (vector vector_l2_ops)"))
    assert [f.severity for f in findings] == ["warning", "info"]
    assert "not for cosine distance" in findings[0].message and "no usable vector index" in findings[1].message


@pytest.mark.slow
def test_doctor_on_pgvector_reads_the_models_length_from_its_configuration(postgres: Settings) -> None:
    """The whole command, with the embeddings server down: the served model's length comes from its files."""
    url = table_in_schema(postgres, "cli", "vector(256)", 3, "USING hnsw (vector vector_cosine_ops)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBED_", "OPENWEBUI_"))} | {
        "EMBED_STORE": "pgvector", "EMBED_PGVECTOR_URL": url, "EMBED_PORT": str(postgres.port), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "vector_bridge.cli", "doctor", "--json"], capture_output=True,
                             text=True, cwd=REPO, env=env, timeout=300)
    assert process.returncode == 1, process.stderr
    result = json.loads(process.stdout)
    assert result["openwebui"]["dimension"] == 384 and result["pgvector"]["table"]["dimension"] == 256
    [cut] = [f for f in result["findings"] if f["severity"] == "error"]
    assert "cuts every vector" in cut["message"] and "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH=384" in cut["fix"]
    # the table's length is the table's finding, not one per collection
    assert not [f for f in result["findings"] if f["collection"] == "kb" and "dimension" in f["message"]]
    password = (postgres.state_dir / "postgres-openwebui.password").read_text().strip()
    assert password not in process.stdout + process.stderr
