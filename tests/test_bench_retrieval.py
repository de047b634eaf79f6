"""bench/retrieval.py on a corpus with blank documents and queries: skipped and counted, not a 400."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import HYBRID, MODEL
from tests.servers import REPO

CORPUS = [
    {"_id": "d1", "title": "Mitochondria", "text": "Mitochondria produce ATP in cells."},
    {"_id": "d2", "title": "", "text": ""},                    # blank: the API would answer 400
    {"_id": "d3", "title": "Cats", "text": "The cat sat on the mat."},
    {"_id": "d4", "title": None, "text": "   \n "},             # whitespace only
    {"_id": "d5", "text": "Photosynthesis turns light into sugar in plants."},
]
QUERIES = [
    {"_id": "q1", "text": "What produces ATP?"},
    {"_id": "q2", "text": ""},
    {"_id": "q3", "text": "Where did the cat sit?"},
    {"_id": "q4", "text": "a query about a blank document"},
]
QRELS = [("q1", "d1"), ("q2", "d3"), ("q3", "d3"), ("q4", "d2")]


def write_beir(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(c) for c in CORPUS) + "\n\n")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"{q}\t{d}\t1\n" for q, d in QRELS))


def test_blank_documents_and_queries_are_skipped_and_reported(server: str, tmp_path: Path) -> None:
    data = tmp_path / "tiny"
    write_beir(data)
    run = subprocess.run([sys.executable, "bench/retrieval.py", "--data", str(data), "--model", MODEL,
                          "--model", HYBRID, "--url", server, "--no-chroma", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.splitlines()[-1])["results"]
    for result in results:
        assert (result["documents"], result["skipped_documents"]) == (3, 2)
        assert (result["queries"], result["skipped_queries"]) == (3, 1)
        assert result["unreachable_relevant"] == 1  # q4 is kept; its only relevant document is blank
    assert "skipped 2 blank documents and 1 blank queries" in run.stdout


def test_held_out_split_judges_by_eval_where_there_is_one_and_reports_halfvec_figures(server: str,
                                                                                       tmp_path: Path) -> None:
    data = tmp_path / "tuned"
    write_beir(data)
    # Tuning and held-out queries split apart, as KorQuAD's tune.tsv and eval.tsv are.
    (data / "qrels" / "tune.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (data / "qrels" / "eval.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td3\t1\n")
    run = subprocess.run([sys.executable, "bench/retrieval.py", "--data", str(data), "--model", HYBRID,
                          "--url", server, "--no-chroma", "--split", "held-out", "--halfvec", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout.splitlines()[-1])["results"]
    assert (result["data"], result["queries"]) == ("tuned (eval)", 1)
    assert result["ndcg@10"] == result["fp16_ndcg@10"] == 1.0  # "Where did the cat sit?" finds the cat
    assert "nDCG@10 (fp16)" in run.stdout
