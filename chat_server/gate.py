"""Who may call what on the chat server, and how often: embed_server's access gate, plus a per-credential
limit of its own on the routes that generate or upload, and the WebSocket left to authenticate itself.

A browser cannot set headers on a WebSocket, so the chat socket takes the caller's credential in its first
message (never in the URL, which proxies and access logs keep) and checks it, and each question's rate
limit, itself. Every other path is judged exactly as by ``AccessGate``.
"""

from __future__ import annotations

from embed_server.auth import AccessGate, FailedAttempts, KeyGuard, bearer_token, key_identity, under
from embed_server.errors import APIError, AuthenticationFailed, RateLimited

# Routes that generate text or upload files: the costly ones, limited per credential by chat_rate_limit.
CHAT_ROUTES = ("/v1/chat/completions", "/api/chat", "/api/documents")
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
