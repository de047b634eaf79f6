"""Who is asking, and which Knowledge bases they may read: Open WebUI answers, asked with the caller's own
Open WebUI key or session token (the direct and OpenAI-compatible routes)."""

from __future__ import annotations

from fastapi import Request

from chat_server.errors import UpstreamUnavailable
from embed_server.auth import bearer_token
from embed_server.errors import AuthenticationFailed, PermissionDenied
from vector_bridge.access import CredentialRefused, KnowledgeAccess, KnowledgeBase, NotPermitted, OpenWebUIUnavailable


async def readable_bases(request: Request, token: str | None = None) -> list[KnowledgeBase]:
    """The Knowledge bases the caller may read; ``token`` when it does not come in the Authorization header
    (a WebSocket from a browser)."""
    access: KnowledgeAccess = request.app.state.knowledge_access
    token = token or bearer_token(request.headers.get("authorization"))
    # An address that has used up its failed attempts is not let ask Open WebUI about a credential it has not
    # answered for lately: made-up tokens all pass the gate (each is a new "credential"), so this is what
    # bounds them. A credential Open WebUI accepted a moment ago is still served from that address.
    if not access.knows(token):
        request.app.state.failed_attempts.check(request.client.host if request.client else None)
    try:
        bases = await access.readable(token)
        # Open WebUI names the user it calls for (ENABLE_FORWARD_USER_INFO_HEADERS). A connection set up with one
        # fixed key would answer every user from that key's Knowledge: refused. Its auth must forward the session.
        forwarded = request.headers.get("x-openwebui-user-id")
        if forwarded is not None and await access.session_user(token) != forwarded:
            raise PermissionDenied("Open WebUI called for another user than the credential it sent belongs to: set "
                                   "this connection's auth to 'Session' so each user's own session reaches this server.")
    except CredentialRefused as error:
        raise request.app.state.failed_attempts.refuse(
            request.client.host if request.client else None,
            AuthenticationFailed(str(error), headers={"WWW-Authenticate": "Bearer"})) from None
    except NotPermitted as error:
        raise PermissionDenied(str(error)) from None
    except OpenWebUIUnavailable as error:
        raise UpstreamUnavailable(f"Open WebUI, which says who may read what, is unavailable: {error}") from None
    return bases
