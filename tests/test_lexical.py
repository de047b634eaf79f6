"""The lexical half of the hybrid models: features, stable hashing, document frequencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder, cjk_share, lexical_features
from tests.servers import REPO


def test_mixed_korean_and_english_text() -> None:
    assert lexical_features("React 컴포넌트는 UI를 만든다, cells and proteins!") == [
        "react", "컴포", "포넌", "넌트", "트는", "ui", "를", "만든", "든다", "cell", "and", "protein"]


def test_chinese_and_japanese_use_bigrams_too() -> None:
    assert lexical_features("東京タワー") == ["東京", "京タ", "タワ", "ワー"]
    assert lexical_features("中文") == ["中文"]


def test_plural_folding_only_touches_long_ascii_words() -> None:
    assert lexical_features("cats studies glass bus genes boxes analysis virus") == [
        "cats", "study", "glass", "bus", "gene", "box", "analysis", "virus"]


def test_script_share() -> None:
    assert cjk_share("What produces ATP?") == 0
    assert cjk_share("임종석이 주도한 시위는?") == 1
    assert 0.4 < cjk_share("React 컴포넌트") < 0.6


def test_document_vectors_are_unit_length_and_signed() -> None:
    encoder = HashedLexicalEncoder(4096)
    vector = encoder.vector(encoder.slots("alpha beta beta gamma delta epsilon zeta eta theta iota kappa"))
    assert abs(np.linalg.norm(vector) - 1) < 1e-6
    assert (vector < 0).any() and (vector > 0).any()


def _vector_in_a_new_process(text: str) -> np.ndarray:
    code = ("import sys, numpy as np; from embed_server.backends.lexical import HashedLexicalEncoder as E; "
            "e = E(4096); sys.stdout.write(' '.join(map(repr, e.vector(e.slots(sys.argv[1])).tolist())))")
    output = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, cwd=REPO,
                            env={"PYTHONHASHSEED": "12345", "PATH": ""}, check=True).stdout
    return np.array([float(x) for x in output.split()], dtype=np.float32)


def test_vectors_are_the_same_in_every_process() -> None:
    text = "Stable vectors 안정적인 벡터 across restarts"
    encoder = HashedLexicalEncoder(4096)
    assert np.array_equal(_vector_in_a_new_process(text), encoder.vector(encoder.slots(text)))
    # Pinned slots: a change of hash function would silently break every stored vector.
    pinned = {index: round(weight, 3) for index, weight in encoder.slots("proteins 단백").items()}
    assert pinned == PINNED_SLOTS


PINNED_SLOTS = {2545: 1.0, 2210: -1.0}


def test_document_frequencies_count_each_document_once_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "df.npz"
    encoder = HashedLexicalEncoder(64)
    frequencies = DocumentFrequencies(64, path, save_every=1000)
    for text in ["alpha beta", "alpha gamma", "alpha beta"]:  # the third repeats the first
        frequencies.add(text, encoder.slots(text))
    assert frequencies.documents == 2
    idf = frequencies.idf()
    alpha, _ = next(iter(encoder.slots("alpha").items()))
    gamma, _ = next(iter(encoder.slots("gamma").items()))
    assert idf[alpha] < idf[gamma]
    frequencies.save()
    again = DocumentFrequencies(64, path)
    assert again.documents == 2 and np.array_equal(again.idf(), idf)
    again.add("alpha beta", encoder.slots("alpha beta"))
    assert again.documents == 2  # remembered across the restart
    assert DocumentFrequencies(32, path).documents == 0  # another size starts afresh


def test_idf_is_neutral_before_any_document() -> None:
    assert np.array_equal(DocumentFrequencies(16, None).idf(), np.ones(16, dtype=np.float32))
