"""Our embeddings server as the vector-bridge tools call it: over HTTP, like Open WebUI does."""

from __future__ import annotations

import base64

import httpx
import numpy as np

from config import Settings


class EmbeddingsError(RuntimeError):
    pass


class ModelNotServed(EmbeddingsError):
    pass


class EmbeddingsClient:
    def __init__(self, settings: Settings, timeout: float = 600) -> None:
        self.url = settings.embeddings_url
        headers = {"Authorization": f"Bearer {settings.api_keys[0].get_secret_value()}"} if settings.api_keys else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def rerank(self, model: str, query: str, documents: list[str]) -> list[float]:
        """A relevance score per document, in the documents' order (our /v1/rerank)."""
        body = {"model": model, "query": query, "documents": documents, "top_n": len(documents)}
        response = self._post("/rerank", body, model)
        scores = [0.0] * len(documents)
        for result in response.json()["results"]:
            scores[result["index"]] = float(result["relevance_score"])
        return scores

    def _post(self, path: str, body: dict, model: str) -> httpx.Response:
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as error:
            raise EmbeddingsError(f"cannot reach the embeddings server at {self.url}: {error}") from error
        if response.status_code == 404:
            raise ModelNotServed(f"the embeddings server at {self.url} does not serve {model!r}")
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise EmbeddingsError(f"embeddings server answered {response.status_code}: {message}")
        return response

    def embed(self, model: str, texts: list[str], input_type: str) -> np.ndarray:
        """One row per text. Asks for base64, as the official OpenAI client does: a 4,480-d hybrid vector
        is ~90 KB of JSON floats and parsing them costs more than the forward pass."""
        body = {"model": model, "input": texts, "input_type": input_type, "encoding_format": "base64"}
        response = self._post("/embeddings", body, model)
        rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in response.json()["data"]]
        return np.stack(rows)
