"""A small client for Open WebUI's REST API: auth, Knowledge, files, retrieval, embedding config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from config import Settings
from vector_bridge.openwebui_env import embedding_update_body


class OpenWebUIError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FileProcessingFailed(OpenWebUIError):
    pass


class OpenWebUIClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 600) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "OpenWebUIClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if isinstance(detail, list):  # a validation error quotes the input it refused, keys included
                detail = "; ".join(f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg', '')}"
                                   for item in detail if isinstance(item, dict))
            raise OpenWebUIError(f"{method} {path}: {response.status_code} {str(detail)[:500]}", response.status_code)
        return response.json()

    def _use_token(self, answer: dict) -> dict:
        self.http.headers["Authorization"] = f"Bearer {answer['token']}"
        return answer

    # Accounts
    def sign_up(self, name: str, email: str, password: str) -> dict:
        """The first account on a fresh Open WebUI becomes its admin."""
        return self._use_token(self._call("POST", "/api/v1/auths/signup",
                                          json={"name": name, "email": email, "password": password}))

    def sign_in(self, email: str, password: str) -> dict:
        return self._use_token(self._call("POST", "/api/v1/auths/signin", json={"email": email, "password": password}))

    # Knowledge and files
    def create_knowledge(self, name: str, description: str = "") -> dict:
        return self._call("POST", "/api/v1/knowledge/create", json={"name": name, "description": description})

    def _all_pages(self, path: str, **params: Any) -> list[dict]:
        """Every item of a list Open WebUI answers a page at a time (``{"items": [...], "total": n}``)."""
        found: list[dict] = []
        page = 1
        while True:
            answer = self._call("GET", path, params={**params, "page": page})
            found += answer["items"]
            if not answer["items"] or len(found) >= answer["total"]:
                return found
            page += 1

    def list_knowledge(self) -> list[dict]:
        """Every Knowledge base this token may read."""
        return self._all_pages("/api/v1/knowledge/")

    def files(self) -> list[dict]:
        """Every file this token may see (all users' files for an admin, by Open WebUI's default)."""
        return self._all_pages("/api/v1/files/", content="false")

    def file(self, file_id: str) -> dict:
        """One file by id (an admin sees every user's; 404 when it does not exist)."""
        return self._call("GET", f"/api/v1/files/{file_id}")

    def all_users(self) -> list[dict]:
        """Every user (admin only; not filtered by access control)."""
        return self._call("GET", "/api/v1/users/all")["users"]

    def session_user(self) -> dict:
        return self._call("GET", "/api/v1/auths/")

    def knowledge_files(self, knowledge_id: str) -> list[dict]:
        return self._all_pages(f"/api/v1/knowledge/{knowledge_id}/files")

    def knowledge(self, knowledge_id: str) -> dict:
        return self._call("GET", f"/api/v1/knowledge/{knowledge_id}")

    def upload_file(self, path: Path, metadata: dict | None = None) -> dict:
        """Upload and process in the background. With ``metadata={"knowledge_id": ...}`` Open WebUI also
        adds the file to that Knowledge base when processing completes, even if this client goes away."""
        form = {"metadata": json.dumps(metadata)} if metadata else None
        with path.open("rb") as file:
            return self._call("POST", "/api/v1/files/", files={"file": (path.name, file)}, data=form)

    def knowledge_sync_diff(self, knowledge_id: str, manifest: list[dict]) -> dict:
        """Which of these files (name, path, SHA-256, size) the Knowledge base lacks or holds in another version."""
        return self._call("POST", f"/api/v1/knowledge/{knowledge_id}/sync/diff", json={"manifest": manifest})

    def remove_file_from_knowledge(self, knowledge_id: str, file_id: str) -> dict:
        return self._call("POST", f"/api/v1/knowledge/{knowledge_id}/file/remove", json={"file_id": file_id})

    def wait_for_processing(self, file_id: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        # A short file is done in a few tens of ms: poll fast first, then back off to spare the server.
        pause = 0.02
        while time.monotonic() < deadline:
            status = self._call("GET", f"/api/v1/files/{file_id}/process/status")
            if status.get("status") == "completed":
                return
            if status.get("status") == "failed":
                raise FileProcessingFailed(f"file {file_id}: {status.get('error', 'processing failed')}")
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise OpenWebUIError(f"file {file_id} still processing after {timeout:.0f} s")

    def add_file_to_knowledge(self, knowledge_id: str, file_id: str) -> dict:
        return self._call("POST", f"/api/v1/knowledge/{knowledge_id}/file/add", json={"file_id": file_id})

    # Retrieval
    def query_collection(self, collection: str, query: str, k: int = 5) -> dict:
        return self._call("POST", "/api/v1/retrieval/query/collection",
                          json={"collection_names": [collection], "query": query, "k": k})

    # Embedding configuration
    def embedding_config(self) -> dict:
        return self._call("GET", "/api/v1/retrieval/embedding")

    def apply_embedding_config(self, settings: Settings, model: str | None = None) -> dict:
        """Point a running Open WebUI at our embeddings server now, and read the result back."""
        wanted = embedding_update_body(settings, model)
        self._call("POST", "/api/v1/retrieval/embedding/update", json=wanted)
        current = self.embedding_config()
        mismatched = [key for key in ("RAG_EMBEDDING_ENGINE", "RAG_EMBEDDING_MODEL") if current.get(key) != wanted[key]]
        if current.get("openai_config", {}).get("url") != wanted["openai_config"]["url"]:
            mismatched.append("openai_config.url")
        if mismatched:
            raise OpenWebUIError(f"Open WebUI did not take: {', '.join(mismatched)}")
        return current

    # Crash recovery for ingest: find uploads an earlier (killed) run left behind, watch and adopt them.
    def search_files(self, filename: str) -> list[dict]:
        """Files whose name matches ``filename`` (``*`` and ``?`` are wildcards), newest first, without their
        text; an admin sees every user's. Open WebUI answers "no match" with 404: that is an empty list here."""
        try:
            return self._call("GET", "/api/v1/files/search",
                              params={"filename": filename, "content": "false", "limit": 1000})
        except OpenWebUIError as error:
            if error.status == 404:
                return []
            raise

    def processing_status(self, file_id: str) -> str:
        """pending, processing, completed or failed (one poll; ``wait_for_processing`` loops on it)."""
        return self._call("GET", f"/api/v1/files/{file_id}/process/status").get("status", "pending")

    # The Knowledge chat server as a model connection
    def add_chat_connection(self, url: str) -> dict:
        """Our chat server as an OpenAI connection whose auth forwards each user's own session ("Session" in
        Admin > Settings > Connections): it then answers every user from the Knowledge that user may read."""
        return self._add_connection(url, "", "session")

    def add_pipelines_connection(self, url: str, key: str) -> dict:
        """Our Pipelines server as an OpenAI connection with its key (Open WebUI skips a pipelines connection
        whose key is empty); Open WebUI names the chatting user in each request it sends there."""
        return self._add_connection(url, key, "bearer")

    def _add_connection(self, url: str, key: str, auth_type: str) -> dict:
        config = self._call("GET", "/openai/config")
        urls = list(config.get("OPENAI_API_BASE_URLS") or [])
        keys = list(config.get("OPENAI_API_KEYS") or [])
        configs = dict(config.get("OPENAI_API_CONFIGS") or {})
        if url not in urls:
            urls.append(url)
        keys += [""] * (len(urls) - len(keys))
        index = urls.index(url)
        keys[index] = key
        configs[str(index)] = {**configs.get(str(index), {}), "enable": True, "auth_type": auth_type}
        self._call("POST", "/openai/config/update", json={"ENABLE_OPENAI_API": True, "OPENAI_API_BASE_URLS": urls,
                                                          "OPENAI_API_KEYS": keys, "OPENAI_API_CONFIGS": configs})
        return {"url": url, "auth_type": auth_type}
