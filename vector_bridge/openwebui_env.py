"""The one place that knows Open WebUI's environment variable names for our stack."""

from __future__ import annotations

import textwrap

from config import Settings

PERSISTENT_CONFIG_NOTE = (
    "Open WebUI saves RAG_* values in its database on its first start and ignores later changes "
    "to them; set ENABLE_PERSISTENT_CONFIG=false to make this environment win on every start, "
    "or switch a running instance with `vector-bridge openwebui-apply`."
)


def openwebui_environment(settings: Settings, model: str | None = None) -> dict[str, str]:
    """Environment for Open WebUI: embeddings from our server, vectors in our store (Chroma or pgvector)."""
    spec = settings.models[0] if model is None else next(s for s in settings.models if model in s.names)
    keys = [key.get_secret_value() for key in settings.api_keys]
    env = {
        "RAG_EMBEDDING_ENGINE": "openai",
        "RAG_OPENAI_API_BASE_URL": settings.embeddings_url,
        # Open WebUI always sends a Bearer header; any value passes when the server has no keys.
        "RAG_OPENAI_API_KEY": keys[0] if keys else "unused",
        "RAG_EMBEDDING_MODEL": spec.id,
    }
    if settings.store == "pgvector":
        env |= pgvector_environment(settings, model_dimension(settings, spec.id))
    else:
        env |= {"VECTOR_DB": "chroma", "CHROMA_HTTP_HOST": settings.chroma_host,
                "CHROMA_HTTP_PORT": str(settings.chroma_port), "CHROMA_HTTP_SSL": str(settings.chroma_ssl).lower()}
    if settings.chroma_token is not None and settings.store == "chroma":
        # Open WebUI splits this value on "," and "=": the token may contain neither.
        env["CHROMA_HTTP_HEADERS"] = f"Authorization=Bearer {settings.chroma_token.get_secret_value()}"
    if spec.kind == "hybrid" or spec.query_prefix or spec.document_prefix:
        # Sent as a body field: the server applies the model's prefixes or query weights.
        env |= {
            "RAG_EMBEDDING_PREFIX_FIELD_NAME": "input_type",
            "RAG_EMBEDDING_QUERY_PREFIX": "query",
            "RAG_EMBEDDING_CONTENT_PREFIX": "document",
        }
    return env


# pgvector indexes at most 2,000 dimensions as `vector` and 4,000 as `halfvec` (half precision).
PGVECTOR_MAX_INDEXED = 2000
HALFVEC_MAX_INDEXED = 4000


class StoreDoesNotFit(ValueError):
    """The model's vectors are longer than pgvector can index."""


def pgvector_environment(settings: Settings, dimension: int) -> dict[str, str]:
    """Open WebUI on pgvector, its one table sized for ``dimension``: Open WebUI pads or cuts every vector to
    the length the table was created with, so it must be the served model's, and fixed before the first start."""
    from vector_bridge.postgres import pgvector_url

    if dimension > HALFVEC_MAX_INDEXED:
        raise StoreDoesNotFit(f"the model's vectors have {dimension} dimensions; pgvector indexes at most "
                              f"{HALFVEC_MAX_INDEXED} (halfvec): serve a model with shorter vectors on pgvector")
    env = {"VECTOR_DB": "pgvector", "PGVECTOR_DB_URL": pgvector_url(settings),
           "PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH": str(dimension), "PGVECTOR_INDEX_METHOD": "hnsw"}
    if dimension > PGVECTOR_MAX_INDEXED:
        env["PGVECTOR_USE_HALFVEC"] = "true"
    return env


def model_dimension(settings: Settings, model: str) -> int:
    """The length of the vectors a served model gives, read from its files (its weights are not loaded)."""
    spec = next(s for s in settings.models if model in s.names)
    if spec.kind == "hybrid":
        assert spec.dense is not None
        return model_dimension(settings, spec.dense) + spec.lexical_dim
    from transformers import AutoConfig

    from embed_server.backends.transformer import resolve_source

    assert spec.source is not None
    return int(AutoConfig.from_pretrained(str(resolve_source(spec.source))).hidden_size)


CHAT_CONNECTION_NOTE = (
    "Two Open WebUI connections: the Knowledge chat server, then the Pipelines server. The chat server's key "
    "stays empty: that connection's auth must be 'Session' (Admin > Settings > Connections, or `vector-bridge "
    "openwebui-apply --chat`), so that each user's own session reaches the server and it answers from that "
    "user's Knowledge only; until then it refuses. The Pipelines server takes its key; Open WebUI names the "
    "chatting user to it, and it gives each user only the Knowledge they may read (it needs the chat server's "
    "OPENWEBUI_API_KEY to be an Open WebUI admin's key to tell)."
)


def chat_connection_environment(settings: Settings, pipelines_key: str) -> dict[str, str]:
    """Open WebUI's connection lines for the chat server and the Pipelines server (`;`-separated lists, in the
    same order, as Open WebUI reads them)."""
    return {"ENABLE_OPENAI_API": "true", "OPENAI_API_BASE_URLS": f"{settings.chat_url};{settings.pipelines_url}",
            "OPENAI_API_KEYS": f";{pipelines_key}", "ENABLE_FORWARD_USER_INFO_HEADERS": "true"}


def render_env_file(env: dict[str, str]) -> str:
    lines = [f"# {line}" for line in textwrap.wrap(PERSISTENT_CONFIG_NOTE, 96)]
    lines += [f"{name}={value}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def embedding_update_body(settings: Settings, model: str | None = None) -> dict:
    """Body of Open WebUI's admin POST /api/v1/retrieval/embedding/update, from the same facts."""
    env = openwebui_environment(settings, model)
    return {
        "RAG_EMBEDDING_ENGINE": env["RAG_EMBEDDING_ENGINE"],
        "RAG_EMBEDDING_MODEL": env["RAG_EMBEDDING_MODEL"],
        "RAG_EMBEDDING_BATCH_SIZE": 1,
        "ENABLE_ASYNC_EMBEDDING": True,
        "RAG_EMBEDDING_CONCURRENT_REQUESTS": 0,
        "openai_config": {"url": env["RAG_OPENAI_API_BASE_URL"], "key": env["RAG_OPENAI_API_KEY"]},
    }
