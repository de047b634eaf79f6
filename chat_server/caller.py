"""Who is asking, and which Knowledge bases they may read: Open WebUI answers, asked with the caller's own
Open WebUI key or session token (the direct and OpenAI-compatible routes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import HTTPConnection

from chat_server.errors import UpstreamUnavailable
from embed_server.auth import KeyGuard, bearer_token, key_identity
from embed_server.errors import AuthenticationFailed, PermissionDenied
from vector_bridge.access import CredentialRefused, KnowledgeAccess, KnowledgeBase, NotPermitted, OpenWebUIUnavailable


async def readable_bases(request: HTTPConnection, token: str | None = None) -> list[KnowledgeBase]:
    """The Knowledge bases the caller may read; ``token`` when it does not come in the Authorization header
    (a WebSocket from a browser)."""
    access: KnowledgeAccess = request.app.state.knowledge_access
    token = token or bearer_token(request.headers.get("authorization"))
    # An address that has used up its failed attempts is not let ask Open WebUI about a credential it has not
    # answered for lately: made-up tokens all pass the gate (each is a new "credential"), so this is what
    # bounds them. A credential Open WebUI accepted a moment ago is still served from that address.
    if not access.knows(token):
        request.app.state.failed_attempts.check(request.client.host if request.client else None)
    with _asking_open_webui(request):
        bases = await access.readable(token)
        # Open WebUI names the user it calls for (ENABLE_FORWARD_USER_INFO_HEADERS). A connection set up with one
        # fixed key would answer every user from that key's Knowledge: refused. Its auth must forward the session.
        forwarded = request.headers.get("x-openwebui-user-id")
        if forwarded is not None and await access.session_user(token) != forwarded:
            raise PermissionDenied("Open WebUI called for another user than the credential it sent belongs to: set "
                                   "this connection's auth to 'Session' so each user's own session reaches this server.")
    return bases


async def chat_identity(connection: HTTPConnection, token: str) -> str:
    """Whose chat budget a credential spends: its Open WebUI user's, for a session token (every sign-in mints
    a new one). Open WebUI tells who holds an API key only to that user's browser session, so a key is its
    own budget; Open WebUI keeps one key per user. Call it once Open WebUI has accepted ``token``."""
    access: KnowledgeAccess = connection.app.state.knowledge_access
    with _asking_open_webui(connection):
        user = await access.session_user(token)  # kept for a few seconds, like the Knowledge list
    return f"user:{user}" if user else key_identity(token)


async def count_chat(connection: HTTPConnection, token: str | None = None) -> str:
    """One request that generates or uploads, against its user's chat_rate_limit (RateLimited when spent);
    returns the identity it was counted against."""
    identity = await chat_identity(connection, token or bearer_token(connection.headers.get("authorization")))
    chat_users: KeyGuard = connection.app.state.chat_users
    chat_users.count(identity)
    return identity


@contextmanager
def _asking_open_webui(connection: HTTPConnection) -> Iterator[None]:
    """Open WebUI's answers as this server's errors."""
    try:
        yield
    except CredentialRefused as error:
        raise connection.app.state.failed_attempts.refuse(
            connection.client.host if connection.client else None,
            AuthenticationFailed(str(error), headers={"WWW-Authenticate": "Bearer"})) from None
    except NotPermitted as error:
        raise PermissionDenied(str(error)) from None
    except OpenWebUIUnavailable as error:
        raise UpstreamUnavailable(f"Open WebUI, which says who may read what, is unavailable: {error}") from None
