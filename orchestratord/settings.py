"""Settings: read once, at the edge, from an optional YAML file and `ORCHD_*` environment variables.

Environment variables override the file; nested keys use `__`, e.g. `ORCHD_QUEUE__CAPACITY=64` or
`ORCHD_STATE_URL=redis://localhost:6379/0`. Unknown keys, missing fields and bad URLs stop start-up
with a message naming the key and the file. This is the only module that reads `os.environ`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from orchestratord.auth import DEFAULT_TENANT, hash_key, parse_keys_file
from pool_manager.specs import PoolSpec, ReplicaSpec
from worker_adapters.mock import check_options as check_mock_options
from worker_adapters.registry import check_sampling_extensions, check_tokenizer

Engine = Literal["mock", "llamacpp", "openai", "vllm", "tgi", "ollama"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplicaConfig(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = ""
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http(s) URL with a host")
        return value.rstrip("/")


class PoolConfig(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    engine: Engine
    models: list[str] = Field(min_length=1)
    replicas: list[ReplicaConfig] = Field(min_length=1)
    slots: int = Field(default=4, ge=1, le=4096)
    ctx_max: int = Field(default=4096, ge=16)
    max_tokens_out: int = Field(default=4096, ge=1)
    engine_version: str | None = None
    engine_model: str | None = None
    device_mask: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    api: Literal["completion", "chat", "auto"] = "auto"
    read_timeout_s: float = Field(default=60.0, gt=0)
    first_token_timeout_s: float = Field(default=600.0, gt=0)
    max_seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _engine_urls(self) -> PoolConfig:
        if self.engine != "mock":
            missing = [r.id for r in self.replicas if not r.url]
            if missing:
                raise ValueError(f"replicas {missing} of engine {self.engine!r} need a url")
        return self

    @model_validator(mode="after")
    def _one_engine_model(self) -> PoolConfig:
        if self.engine_model is not None and len(self.models) > 1:
            raise ValueError(
                f"engine_model names the engine's name for a pool's only model, but this pool serves "
                f"{len(self.models)} ({', '.join(self.models)}); list them under the names the engine "
                "answers to and leave engine_model out"
            )
        return self

    @model_validator(mode="after")
    def _openai_options(self) -> PoolConfig:
        if self.engine == "openai":
            try:
                check_sampling_extensions(self.options)
                check_tokenizer(self.options)
            except ValueError as exc:
                raise ValueError(f"options: {exc}") from None
        return self

    @model_validator(mode="after")
    def _mock_options(self) -> PoolConfig:
        if self.engine != "mock":
            return self
        owners = [("options", self.options)] + [
            (f"replicas {r.id!r} options", r.options) for r in self.replicas
        ]
        for where, options in owners:
            try:
                check_mock_options(options)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        return self

    def to_spec(self) -> PoolSpec:
        return PoolSpec(
            id=self.id,
            engine=self.engine,
            models=tuple(self.models),
            replicas=tuple(ReplicaSpec(r.id, r.url, dict(r.options)) for r in self.replicas),
            slots=self.slots,
            ctx_max=self.ctx_max,
            max_tokens_out=self.max_tokens_out,
            engine_version=self.engine_version,
            device_mask=self.device_mask,
            labels=dict(self.labels),
            options=dict(self.options),
            engine_model=self.engine_model,
            api=self.api,
            read_timeout_s=self.read_timeout_s,
            first_token_timeout_s=self.first_token_timeout_s,
            max_seed=self.max_seed,
        )


def _default_pools() -> list[PoolConfig]:
    return [
        PoolConfig(id="default", engine="mock", models=["mock"], replicas=[ReplicaConfig(id="r0")], slots=4)
    ]


class QueueConfig(_Strict):
    capacity: int = Field(default=1024, ge=1)
    tenant_capacity: int | None = Field(default=None, ge=1)
    full_policy: Literal["reject", "drop-lru", "shed-low-priority"] = "reject"
    class_weights: dict[str, float] = Field(default_factory=lambda: {"interactive": 8.0, "batch": 1.0})
    fairness_unit: Literal["requests", "tokens"] = "requests"
    # The longest a job of each class may wait in the queue (absent: no limit); then it ends with a
    # retriable POOL_UNAVAILABLE naming the limit. A job predicted to wait longer is refused at
    # admission with 429 max-wait.
    max_wait_s: dict[str, float] = Field(default_factory=dict)
    # A queued job whose model no replica has been able to serve for this long ends with a retriable
    # POOL_UNAVAILABLE, and admission answers 503 at once for that model until a replica is back.
    unready_limit_s: float = Field(default=120.0, gt=0)
    # The share of each pool's slots kept for interactive jobs: a batch job takes a slot only while more
    # than floor(holdback x the pool's slots) are free (0: off).
    holdback: float = Field(default=0.0, ge=0, lt=1)
    # With full_policy reject: a client refused from a full queue with an Idempotency-Key is
    # promised the place its Retry-After points at; its retry (same key) takes it before new
    # arrivals if it comes within this many seconds of that time (0: no places held).
    retry_hold_s: float = Field(default=1.0, ge=0, le=60)

    @field_validator("max_wait_s")
    @classmethod
    def _wait_classes(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"interactive", "batch"})
        if unknown:
            raise ValueError(f"unknown priority classes {unknown}; use interactive and batch")
        if any(w <= 0 for w in value.values()):
            raise ValueError("max_wait_s must be positive")
        return value

    @field_validator("class_weights")
    @classmethod
    def _classes(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"interactive", "batch"})
        if unknown:
            raise ValueError(f"unknown priority classes {unknown}; use interactive and batch")
        if any(w <= 0 for w in value.values()):
            raise ValueError("class weights must be positive")
        return value


class TenantConfig(_Strict):
    id: str = Field(min_length=1, max_length=128)
    weight: float = Field(default=1.0, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)
    rps: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


class StreamConfig(_Strict):
    keepalive_s: float = Field(default=15.0, gt=0)
    retention_s: float = Field(default=600.0, ge=0)
    attach_timeout_s: float = Field(default=30.0, gt=0)
    reconnect_grace_s: float = Field(default=10.0, ge=0)
    metrics_interval_s: float = Field(default=1.0, gt=0)
    send_timeout_s: float = Field(default=30.0, gt=0)  # a client that takes no bytes this long is cut off


class MemoryConfig(_Strict):
    # After purges freed at least 100 finished jobs, give the heap's free pages back to the system
    # (glibc's malloc_trim), at most this often; 0: never. Embedded backend only (docs/operations.md)
    trim_interval_s: float = Field(default=60.0, ge=0)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_tokens: int = Field(default=8192, ge=1)
    max_prompt_chars: int = Field(default=1_000_000, ge=1)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    # An idle keep-alive connection closes after this long; keep it above the idle timeout of any load
    # balancer in front (nginx and AWS ALB keep idle backend connections 60 s), else a request it sends
    # on a connection the server closes that very moment fails (docs/operations.md, "Connections").
    keep_alive_s: int = Field(default=75, ge=1)
    # A request body must arrive within max(body_timeout_s, its length / min_body_rate_bytes_s).
    body_timeout_s: float = Field(default=30.0, gt=0)
    min_body_rate_bytes_s: int = Field(default=4096, ge=1)
    # Open client connections; None: three quarters of the process's file descriptor limit. At the
    # cap (or a client address's cap) the connection that has waited longest on its client's bytes
    # (a head or body not sent yet, an idle keep-alive) is closed for the newcomer.
    max_connections: int | None = Field(default=None, ge=8)
    max_connections_per_client: int | None = Field(default=None, ge=1)
    # New jobs are refused (429, policy "overload") while the event loop runs this far behind, two
    # ticks in a row (`loop_lag`): the jobs already admitted keep the process. None: never.
    max_loop_lag_ms: int | None = Field(default=500, ge=10)


class TracingConfig(_Strict):
    # OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces); none: tracing off, at no cost
    otlp_endpoint: str | None = None
    service_name: str = "orchestratord"


class UiConfig(_Strict):
    # The live queue page at /ui. None (auto): on for a loopback host or when API keys are configured
    # (then for admin keys only); off for a non-loopback host without keys.
    enabled: bool | None = None
    interval_s: float = Field(default=1.0, ge=0.2, le=60)  # how often the page gets a new snapshot
    window_s: float = Field(default=300.0, ge=10, le=3600)  # the fair-share chart's span


class BreakerConfig(_Strict):
    failures: int = Field(default=3, ge=1)
    backoff_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=300.0, gt=0)


class RedisConfig(_Strict):
    """The shared state backend, used when `state_url` is `redis://` or `rediss://`."""

    # One deployment's keys; they begin with it in braces (`{orchd:}`), a Redis Cluster hash tag, unless
    # it has a tag of its own (`{orchd}:`): every key of a deployment is in one hash slot.
    key_prefix: str = Field(default="orchd:", min_length=1, max_length=64)
    cluster: bool = False  # state_url names a node of a Redis Cluster (any node; the others are found)
    lease_ttl_s: float = Field(default=10.0, gt=0)  # a dead replica's jobs and slots are freed after this
    heartbeat_s: float = Field(default=2.0, gt=0)  # how often a replica renews its leases
    timeout_s: float = Field(default=2.0, gt=0)  # longest wait for Redis before answering 503
    # per replica, for WATCH transactions (sessions, budgets); every other call shares one pipelined
    # connection (state/redis_line.py), whatever the open streams
    max_connections: int = Field(default=64, ge=4, le=10_000)

    @model_validator(mode="after")
    def _heartbeat(self) -> RedisConfig:
        if self.heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_ttl_s ({self.lease_ttl_s}), "
                "or a live replica's leases could expire between two heartbeats"
            )
        return self


class ApiKeyConfig(_Strict):
    """One API key: its SHA-256 digest (or the key itself, hashed on reading and then forgotten)."""

    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str = Field(min_length=1, max_length=128)
    role: Literal["client", "admin"] = "client"

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_key(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "key" not in data:
            if isinstance(data, dict) and isinstance(data.get("key_sha256"), str):
                return {**data, "key_sha256": data["key_sha256"].lower()}
            return data
        fields = dict(data)
        key = fields.pop("key")
        if "key_sha256" in fields:
            raise ValueError("give either key or key_sha256, not both")
        if not isinstance(key, str) or len(key) < 16:
            raise ValueError("key must be a random secret of at least 16 characters")
        return {**fields, "key_sha256": hash_key(key)}


OpenPath = Literal["/healthz", "/readyz", "/metrics"]
OPEN_PATHS: tuple[OpenPath, ...] = ("/healthz", "/readyz", "/metrics")


class AuthConfig(_Strict):
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_file: str | None = None  # lines of `<sha256 hex> <tenant> [client|admin]`, merged into keys
    allow_unauthenticated: bool = False  # the explicit opt-out for a non-loopback host without keys
    open_paths: list[OpenPath] = Field(default_factory=lambda: list(OPEN_PATHS))  # no key needed

    @model_validator(mode="before")
    @classmethod
    def _read_keys_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("keys_file"):
            return data
        path = Path(str(data["keys_file"]))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read keys_file {str(path)!r}: {exc.strerror}") from None
        return {**data, "keys": [*data.get("keys", []), *parse_keys_file(text, str(path))]}

    @model_validator(mode="after")
    def _unique_keys(self) -> AuthConfig:
        digests = [k.key_sha256 for k in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("the same API key is configured more than once")
        return self


class SessionsConfig(_Strict):
    ttl_s: float = Field(default=600.0, gt=0)  # a session ends this long after its last turn
    max_turns: int = Field(default=8, ge=1)


class BudgetConfig(_Strict):
    """A budget; an omitted dimension is unlimited."""

    tokens: int | None = Field(default=None, ge=0)  # prompt + generated tokens
    time_ms: int | None = Field(default=None, ge=0)  # decode time (dispatch to end)
    cost: float | None = Field(default=None, ge=0)  # in the unit of `prices`


class BudgetsConfig(_Strict):
    session: BudgetConfig = Field(default_factory=BudgetConfig)
    tenant_default: BudgetConfig = Field(default_factory=BudgetConfig)
    tenants: dict[str, BudgetConfig] = Field(default_factory=dict)
    window_s: float | None = Field(default=86400.0, gt=0)  # tenant budgets start afresh this often


class PriceConfig(_Strict):
    input_per_1k: float = Field(default=0.0, ge=0)  # per 1,000 prompt tokens
    output_per_1k: float = Field(default=0.0, ge=0)  # per 1,000 generated tokens


def _default_state_dir() -> str:
    xdg = os.environ.get("XDG_STATE_HOME")
    return str(Path(xdg) / "orchestratord") if xdg else "var"


class CatalogConfig(_Strict):
    dir: str = Field(default_factory=_default_state_dir, min_length=1)  # holds catalog.sqlite3
    # The only directory verify reads artifacts from (symlinks resolved); unset: verify reads none.
    artifacts_dir: str | None = Field(default=None, min_length=1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything the service is configured with. Frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    state_url: str = "memory://"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_prompts: bool = False  # prompts appear in logs only when the operator opts in
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    idempotency_window_s: float = Field(default=600.0, ge=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    # A replica failing its probe is probed again after twice the wait each time, up to this; the
    # default (the interval itself) finds a restarted engine within one interval.
    health_max_backoff_s: float | None = Field(default=None, gt=0)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    tenants: list[TenantConfig] = Field(default_factory=list)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    pools: list[PoolConfig] = Field(default_factory=_default_pools)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)

    @field_validator("state_url")
    @classmethod
    def _state_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "memory":
            return value
        if parts.scheme in ("redis", "rediss") and parts.hostname:
            return value
        raise ValueError(
            f"state_url {redact_url(value)!r} is not supported; use memory:// (one process) or "
            "redis://host:6379/0 (rediss:// for TLS) to share state between replicas"
        )

    @model_validator(mode="after")
    def _cluster(self) -> Settings:
        if not self.redis.cluster:
            return self
        parts = urlsplit(self.state_url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"redis.cluster is true but state_url {redact_url(self.state_url)!r} is not a Redis URL; "
                "name one node of the cluster: redis://host:6379 (rediss:// for TLS)"
            )
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(
                f"redis.cluster is true but state_url {redact_url(self.state_url)!r} names database "
                f"{parts.path.strip('/')!r}; a Redis Cluster has only database 0"
            )
        return self

    @model_validator(mode="after")
    def _unique_pools(self) -> Settings:
        ids = [p.id for p in self.pools]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"pool ids must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _unique_tenants(self) -> Settings:
        ids = [t.id for t in self.tenants]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"tenants: each id may appear once; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _budgets_name_known_tenants(self) -> Settings:
        # a tenant is whoever an API key maps to (without keys, every caller is `default`) or has
        # an entry in `tenants`: a budget for any other name would never apply (a typo, most likely)
        known = {t.id for t in self.tenants} | {k.tenant for k in self.auth.keys}
        if not self.auth.keys:
            known.add(DEFAULT_TENANT)
        unknown = sorted(set(self.budgets.tenants) - known)
        if unknown:
            raise ValueError(
                f"budgets.tenants names tenants that no API key maps to and `tenants` does not list: "
                f"{unknown}; known tenants: {sorted(known)}"
            )
        return self

    @property
    def ui_enabled(self) -> bool:
        """Whether /ui answers: `ui.enabled`, or by default on a loopback host or behind API keys."""
        if self.ui.enabled is not None:
            return self.ui.enabled
        return is_loopback(self.host) or bool(self.auth.keys)

    @model_validator(mode="after")
    def _keys_on_public_hosts(self) -> Settings:
        if not is_loopback(self.host) and not self.auth.keys and not self.auth.allow_unauthenticated:
            raise ValueError(
                f"host {self.host!r} is not a loopback address and no API keys are configured; "
                "configure auth.keys or auth.keys_file, or set auth.allow_unauthenticated: true "
                "to accept unauthenticated requests from the network"
            )
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
        # Precedence: command-line overrides (init kwargs) > environment > the config file.
        return init_settings, env_settings, _FileSource(settings_cls)

    def pool_specs(self) -> list[PoolSpec]:
        return [p.to_spec() for p in self.pools]


_FILE_DATA: ContextVar[Mapping[str, Any]] = ContextVar(
    "orchestratord_config_file", default=MappingProxyType({})
)


class _FileSource(PydanticBaseSettingsSource):
    """The YAML file's contents, the lowest-priority source."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_DATA.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get())


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional YAML file, the environment, and explicit overrides."""
    source = "defaults and environment"
    data: dict[str, Any] = {}
    if path is not None:
        source = f"{path} (or the ORCHD_* environment)"
        data = _read_yaml(Path(path))
    token = _FILE_DATA.set(data)
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    except SettingsError as exc:  # an ORCHD_* variable that is not the JSON its setting needs
        raise ConfigError(_describe_env(exc)) from None
    finally:
        _FILE_DATA.reset(token)
    _check_catalog_dir(settings.catalog.dir, source)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return loaded


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        message = {"extra_forbidden": "unknown key", "missing": "field required"}.get(err["type"], err["msg"])
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def _describe_env(exc: SettingsError) -> str:
    """One paragraph naming the variable(s) behind a setting pydantic-settings could not parse."""
    match = re.search(r'field "([^"]+)"', str(exc))
    field = match.group(1) if match else ""
    prefix = f"ORCHD_{field}".upper()
    names = sorted(n for n in os.environ if n.upper() == prefix or n.upper().startswith(f"{prefix}__"))
    why = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    return (
        f"invalid configuration in the environment: {' or '.join(names) or prefix} is not valid JSON{why}; "
        f"lists and mappings are given as JSON, e.g. "
        """ORCHD_POOLS='[{"id":"default","engine":"mock","models":["mock"],"replicas":[{"id":"r0"}]}]'"""
    )


def _check_catalog_dir(directory: str, source: str) -> None:
    """The catalog's directory must exist or be creatable, and take a new file: else stop now, naming
    the key, rather than when the server opens the catalog."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"invalid configuration in {source}:\n  catalog.dir: cannot create or write {directory!r} "
            f"({reason}); set catalog.dir (or ORCHD_CATALOG__DIR) to a writable directory, "
            "where the model catalog (catalog.sqlite3) is kept"
        ) from None


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{host}{port}").geturl()
