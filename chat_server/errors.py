"""The chat server's own errors, in the OpenAI error shape of ``embed_server.errors``."""

from __future__ import annotations

from embed_server.errors import APIError


class GeneratorDown(APIError):
    """The generator cannot answer now: 503, so clients retry later."""

    status_code = 503
    type = "server_error"
    code = "generator_unavailable"


class UpstreamUnavailable(APIError):
    """Open WebUI, the store or the embeddings server could not be asked: 502."""

    status_code = 502
    type = "server_error"
    code = "upstream_unavailable"


class KnowledgeNotFound(APIError):
    """A Knowledge base that does not exist and one the caller may not read get this same 404."""

    status_code = 404
    type = "invalid_request_error"
    code = "knowledge_not_found"


class UploadTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"
    code = "upload_too_large"


class TooManySockets(APIError):
    """A client address already holds as many chat sockets as one address may: the socket closes with 1013."""

    status_code = 429
    type = "requests"
    code = "too_many_sockets"
