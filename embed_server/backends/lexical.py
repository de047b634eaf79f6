"""Hashed lexical vectors: word tokens for Latin scripts, character bigrams for Hangul, Han and kana.

Every feature goes to a fixed slot (and sign) by an unkeyed BLAKE2b hash, so a text gets the same
vector in every process and after every restart: Python's own ``hash`` is salted per process.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from embed_server.state_file import StateFileError, read_locked, remove_stale_temporaries, set_aside, write_atomic

log = logging.getLogger(__name__)

_CJK = "\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f\u3040-\u30ff\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]+|[^\\W_{_CJK}]+")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_SIBILANT_PLURAL = re.compile(r"(?:[sxz]|ch|sh)es$")


def _light_stem(word: str) -> str:
    # English plural folding only: it measured a small gain on SciFact; stronger stemmers merge
    # words that mean different things.
    if len(word) <= 4 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if _SIBILANT_PLURAL.search(word):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def lexical_features(text: str) -> list[str]:
    """Terms of a text: lower-cased words (plural-folded for ASCII) and CJK character bigrams.

    Korean attaches particles to words ("임종석이"), and Chinese and Japanese do not separate words
    at all, so overlapping character pairs match where whole words would not.
    """
    features: list[str] = []
    for match in _TOKEN.finditer(text.lower()):
        run = match.group()
        if _CJK_CHAR.match(run):
            features += [run[i : i + 2] for i in range(len(run) - 1)] if len(run) > 1 else [run]
        else:
            features.append(_light_stem(run) if run.isascii() else run)
    return features


def cjk_share(text: str) -> float:
    """Share of word characters in Hangul, Han or kana: selects a query's dense/lexical mix."""
    letters = sum(1 for match in _TOKEN.finditer(text) for _ in match.group())
    return len(_CJK_CHAR.findall(text)) / letters if letters else 0.0


@lru_cache(maxsize=1 << 20)
def _slot(feature: str, dim: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    # A random sign per feature makes collisions cancel on average instead of adding up.
    return digest % dim, 1.0 if digest >> 63 else -1.0


class HashedLexicalEncoder:
    """Sublinear term frequency (1 + log tf) in ``dim`` hashed slots, unit length."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def slots(self, text: str) -> dict[int, float]:
        """Signed, sublinear term weights by slot (not normalised)."""
        weights: dict[int, float] = {}
        for feature, count in Counter(lexical_features(text)).items():
            index, sign = _slot(feature, self.dim)
            weights[index] = weights.get(index, 0.0) + sign * (1.0 + math.log(count))
        return weights

    def vector(self, weights: dict[int, float], idf: np.ndarray | None = None) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        if weights:
            indexes = np.fromiter(weights.keys(), dtype=np.int64, count=len(weights))
            vector[indexes] = np.fromiter(weights.values(), dtype=np.float32, count=len(weights))
            if idf is not None:
                vector[indexes] *= idf[indexes]
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                vector /= norm
        return vector


def document_digest(text: str) -> bytes:
    """What a document is known by when counting each one once (never the text itself)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()


def bm25_idf(counts: np.ndarray, documents: int) -> np.ndarray:
    """BM25's IDF per slot from document counts; all ones before any document. A pure function of
    its inputs, so equal counts give bit-equal query vectors in every process."""
    if documents == 0:
        return np.ones(len(counts), dtype=np.float32)
    df = counts.astype(np.float64)
    return np.log1p((documents - df + 0.5) / (df + 0.5)).astype(np.float32)


class CorruptState(ValueError):
    """A document-frequency file that does not parse or does not hold what it should."""


class DocumentFrequencies:
    """How many distinct documents have each slot: the query side's IDF, learned from the documents
    this server embeds. Stored document vectors never depend on it, so it may change freely.

    Kept in ``path`` across restarts. The file is only ever a cache of what was learned: a damaged
    one is set aside and learning starts again, so it can never stop a model from serving.
    Saving happens on a background thread (it fsyncs, which must not block the event loop).
    """

    def __init__(self, dim: int, path: Path | None, save_every: int = 1000) -> None:
        self.dim = dim
        self.path = path
        self.save_every = save_every
        self.counts = np.zeros(dim, dtype=np.int64)
        self.documents = 0
        self._seen: set[bytes] = set()
        self._unsaved = 0
        self._lock = threading.Lock()
        self._saving = threading.Lock()  # one save at a time per instance; the file lock covers the rest
        if path is not None:
            remove_stale_temporaries(path)
            self._load(path)

    def add(self, text: str, slots: dict[int, float], digest: bytes | None = None) -> bool:
        """Count a document unless it was seen before; True when it was new. ``digest`` saves
        hashing the text again when the caller has it already."""
        digest = digest or document_digest(text)
        with self._lock:
            # Open WebUI embeds each Knowledge file twice: count a document once.
            if digest in self._seen:
                return False
            self._seen.add(digest)
            self.counts[list(slots)] += 1
            self.documents += 1
            self._unsaved += 1
            due = self.path is not None and self._unsaved >= self.save_every
        if due and not self._saving.locked():
            threading.Thread(target=self.save_quietly, name="idf-save", daemon=True).start()
        return True

    def idf(self) -> np.ndarray:
        """BM25's IDF per slot; all ones until documents have been seen."""
        with self._lock:
            n, df = self.documents, self.counts.copy()
        return bm25_idf(df, n)

    def state(self) -> tuple[np.ndarray, int, list[bytes]]:
        """A consistent copy of the counts, the number of documents and their digests."""
        with self._lock:
            return self.counts.copy(), self.documents, list(self._seen)

    def save(self) -> None:
        """Write the state atomically. Raises StateFileError when the disk refuses."""
        if self.path is None:
            return
        with self._saving:
            with self._lock:  # copy only: requests wait on this lock
                counts, documents, unsaved = self.counts.copy(), self.documents, self._unsaved
                digests = list(self._seen)
                self._unsaved = 0
            seen = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 12)
            buffer = io.BytesIO()
            np.savez(buffer, counts=counts, documents=documents, seen=seen, dim=self.dim)
            try:
                write_atomic(self.path, buffer.getvalue())
            except StateFileError:
                with self._lock:
                    self._unsaved += unsaved  # try again at the next occasion
                raise

    def save_quietly(self) -> bool:
        """Save, logging instead of raising: losing IDF state must never fail a request or a shutdown."""
        try:
            self.save()
        except StateFileError as error:
            log.error("could not save document frequencies",
                      extra={"event": "state_save_failed", "path": str(self.path), "error": str(error)})
            return False
        return True

    def _load(self, path: Path) -> None:
        try:
            data = read_locked(path)
            if data is None:
                return
            counts, documents, seen, dim = _parse(data)
        except (OSError, CorruptState) as error:
            set_aside(path, f"{type(error).__name__}: {error}")
            return
        if dim != self.dim:
            # Another lexical size: start afresh rather than mix slots (the next save replaces it).
            log.info("document frequencies were for another lexical size; starting afresh",
                     extra={"event": "state_dimension_changed", "path": str(path), "found": dim, "expected": self.dim})
            return
        self.counts, self.documents, self._seen = counts, documents, seen


def _parse(data: bytes) -> tuple[np.ndarray, int, set[bytes], int]:
    """counts, documents, seen digests and dimension from a saved file, checked for consistency."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            counts, documents = archive["counts"], int(archive["documents"])
            seen, dim = archive["seen"], int(archive["dim"])
    except Exception as error:  # numpy and zipfile raise many types for damaged archives
        raise CorruptState(f"unreadable archive ({type(error).__name__}: {error})") from error
    if counts.shape != (dim,) or counts.dtype.kind not in "iu" or seen.ndim != 2 or seen.shape[1:] != (12,):
        raise CorruptState("arrays have the wrong shape or type")
    if documents != len(seen) or (counts < 0).any() or (dim and counts.max(initial=0) > documents):
        raise CorruptState("counts do not agree with the number of documents")
    return counts.astype(np.int64), documents, {bytes(row) for row in seen}, dim
