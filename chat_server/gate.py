"""Who may call what on the chat server, how often and how much: embed_server's access gate, plus a
per-credential pre-check of its own on the routes that generate or upload, body limits per route, and the
WebSocket left to authenticate itself (within a cap of open sockets per address).

The chat rate limit is the Open WebUI user's (``caller.count_chat``, once Open WebUI has said who holds the
credential): every sign-in to Open WebUI mints a new token, so a limit per credential alone would give a
user a fresh budget per sign-in. The gate still holds each credential to the same limit before anything is
asked of Open WebUI, which keeps a flood of made-up credentials cheap to refuse.

A browser cannot set headers on a WebSocket, so the chat socket takes the caller's credential in its first
message (never in the URL, which proxies and access logs keep) and checks it, and each question's rate
limit, itself. Every other path is judged exactly as by ``AccessGate``.
"""

from __future__ import annotations

from collections.abc import Callable

from chat_server.errors import TooManySockets
from config import Settings
from embed_server.auth import AccessGate, FailedAttempts, KeyGuard, bearer_token, key_identity, under
from embed_server.errors import APIError, AuthenticationFailed, RateLimited

# Routes that generate text or upload files: the costly ones, limited per user by chat_rate_limit.
CHAT_ROUTES = ("/v1/chat/completions", "/api/chat", "/api/documents")
# The one route whose body is not JSON: files, bounded by chat_upload_max_bytes and max_request_bytes.
UPLOAD_ROUTES = ("/api/documents",)
# The direct API's routes that answer only what the caller may read: a Bearer credential is required here.
DIRECT_ROUTES = ("/api/chat", "/api/documents", "/api/knowledge")
CHAT_SOCKET = "/api/chat/ws"


class ChatGate(AccessGate):
    def __init__(self, keys: KeyGuard, chat_keys: KeyGuard, failures: FailedAttempts, *,
                 user: tuple[str, ...]) -> None:
        super().__init__(keys, failures, keyed=(), user=user)
        self.chat_keys = chat_keys

    def refusal(self, path: str, authorization: str | None, client_host: str | None) -> APIError | None:
        if path == CHAT_SOCKET:  # exactly this path: it authenticates every connection itself
            return None
        refusal = super().refusal(path, authorization, client_host)
        if refusal is not None or not under(path, CHAT_ROUTES):
            return refusal
        try:
            self.chat_keys.count(key_identity(bearer_token(authorization)))
        except (RateLimited, AuthenticationFailed) as error:
            return error
        return None


# Open WebUI sends a filter the whole chat, images inline as base64: megabytes per picture.
WHOLE_CHAT_ROUTES = ("/filter/inlet", "/filter/outlet")


def body_limit(settings: Settings) -> Callable[[str], int]:
    """The largest body a path of the chat (or Pipelines) server takes. JSON is a question and its history:
    megabytes are plenty, and a cap well under the upload limit keeps memory per request small. Uploads and
    the Pipelines filters, which get the whole chat from Open WebUI, take up to max_request_bytes."""
    json_limit = min(settings.chat_max_json_bytes, settings.max_request_bytes)
    return lambda path: (settings.max_request_bytes if under(path, UPLOAD_ROUTES) or path.endswith(WHOLE_CHAT_ROUTES)
                         else json_limit)


class SocketSlots:
    """Open chat sockets per key, at most ``per_key`` (0: no cap): per client address while a socket has not
    authenticated (a socket that never sends a credential still holds a connection, for AUTH_WAIT_SECONDS),
    then per Open WebUI user, so users behind one reverse proxy do not share one cap."""

    def __init__(self, per_key: int, holder: str = "address") -> None:
        self.cap = per_key
        self.holder = holder
        self._open: dict[str, int] = {}

    def take(self, host: str | None) -> None:
        """Count one more socket for ``host``; TooManySockets (nothing counted) when it holds its cap."""
        key = host or "unknown"
        if self.cap and self._open.get(key, 0) >= self.cap:
            raise TooManySockets(f"Too many chat sockets from this {self.holder}: at most {self.cap} may be "
                                 "open at once. Close one, then connect again.")
        self._open[key] = self._open.get(key, 0) + 1

    def release(self, host: str | None) -> None:
        key = host or "unknown"
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)  # no entry per address that ever connected

    def held(self, host: str | None) -> int:
        return self._open.get(host or "unknown", 0)
