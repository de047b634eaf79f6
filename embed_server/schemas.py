"""Request and response shapes of the OpenAI embeddings API."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, field_validator, model_validator

MAX_INPUTS = 2048  # OpenAI's limit per request
MAX_TOKEN_IDS = 8192  # OpenAI's limit per input; more ids than that would only be decoded to be cut


def _integral(value: Any) -> Any:
    # JSON Schema's "integer" admits 3.0, and some clients serialise ints that way.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check_input(value: Any) -> Any:
    """Clear messages for what OpenAI rejects; pydantic's union errors would list every branch."""
    if isinstance(value, list):
        value = [[_integral(i) for i in item] if isinstance(item, list) else _integral(item) for item in value]
    if isinstance(value, str):
        if not value:
            raise ValueError("the input must not be an empty string")
        return value
    if not isinstance(value, list):
        raise ValueError("must be a string, an array of strings, an array of token ids or an array of arrays of token ids")
    if not value:
        raise ValueError("the input must not be an empty array")
    first = value[0]
    flat_ids = isinstance(first, int) and not isinstance(first, bool)
    if len(value) > MAX_INPUTS and not flat_ids:
        raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(value)}")
    if isinstance(first, str):
        kind, check = "strings", lambda item: isinstance(item, str) and item != ""
    elif flat_ids:
        kind, check = "token ids", _is_token_id
    elif isinstance(first, list):
        kind, check = "arrays of token ids", lambda item: isinstance(item, list) and item and all(map(_is_token_id, item))
        for index, item in enumerate(value):
            if isinstance(item, list) and len(item) > MAX_TOKEN_IDS:
                raise ValueError(f"item {index} has {len(item)} token ids; at most {MAX_TOKEN_IDS} per input")
    else:
        raise ValueError("items must be strings, token ids or arrays of token ids")
    if kind == "token ids" and len(value) > MAX_TOKEN_IDS:
        raise ValueError(f"the input has {len(value)} token ids; at most {MAX_TOKEN_IDS} per input")
    for index, item in enumerate(value):
        if not check(item):
            raise ValueError(f"item {index} is not valid in an array of {kind} (empty, negative or of another type)")
    return value


Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
TokenId = Annotated[StrictInt, Field(ge=0, lt=2**31)]
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_TOKEN_IDS)]


def _is_token_id(item: Any) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**31


class EmbeddingRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI does; clients add their own.
    model_config = ConfigDict(extra="ignore")

    input: Union[
        Text,
        Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)],
        TokenIds,
        Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)],
    ] = Field(
        description="Text or token ids to embed: a string, up to 2048 strings, token ids, or arrays of token ids."
    )
    model: StrictStr = Field(min_length=1, description="A served model id or alias (GET /v1/models).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1, description="Truncate vectors to this size, then re-normalise.")
    user: StrictStr | None = None
    input_type: Literal["query", "document"] | None = Field(
        default=None, description="Selects the model's query or document prefix (Open WebUI's RAG_EMBEDDING_PREFIX_FIELD_NAME)."
    )

    _check = field_validator("input", mode="before")(lambda cls, value: _check_input(value))
    _whole = field_validator("dimensions", mode="before")(lambda cls, value: _integral(value))

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The input as a list: a single string or a single token-id list becomes one item."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]
        return self.input  # type: ignore[return-value]


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    runtime: str | None = Field(default=None, description="torch or onnx; null until the server has placed the model")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:N or mps")
    precision: str | None = Field(default=None, description="fp32, fp16, bf16 or int8")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


MAX_RERANK_DOCUMENTS = 1000


class RerankRequest(BaseModel):
    """What Open WebUI's external reranker sends (RAG_RERANKING_ENGINE=external), Cohere/Jina style."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr = Field(min_length=1)
    query: Text
    documents: Annotated[list[Text], Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)]
    top_n: StrictInt | None = Field(default=None, ge=1)
    return_documents: bool = False


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class SearchRequest(BaseModel):
    """A search of the shared store (vector_bridge): one Knowledge base or one collection."""

    model_config = ConfigDict(extra="forbid")

    query: Text
    knowledge: StrictStr | None = Field(default=None, min_length=1, description="Knowledge base name or id")
    collection: StrictStr | None = Field(default=None, min_length=1, description="Chroma collection name")
    k: StrictInt = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _one_target(self) -> "SearchRequest":
        if (self.knowledge is None) == (self.collection is None):
            raise ValueError("give exactly one of 'knowledge' and 'collection'")
        return self


class SearchHit(BaseModel):
    id: str
    text: str
    score: float = Field(description="cosine similarity")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    model: str
    data: list[SearchHit]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {status: {"model": ErrorResponse} for status in statuses}
