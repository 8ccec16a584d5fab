"""All configuration of interest-stream, validated once at start, and the core's view of it.

Sources, highest priority first: explicit overrides (command-line flags), environment
variables prefixed ``INTEREST_``, a TOML file (``INTEREST_CONFIG`` or ``--config``), defaults.
A bad value raises :class:`SettingsError` whose message names the setting (as its
environment variable) and what is allowed, so the CLI can print one line instead of a
traceback.

The functional core never sees :class:`Settings`: :func:`interest_config`,
:func:`trend_config` and :func:`event_parser` hand it plain objects.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as PydanticSettingsError

from stream.core.dedup import DedupConfig
from stream.core.errors import SettingsError
from stream.core.events import EventParser
from stream.core.interest import InterestConfig
from stream.core.trending import TrendConfig

ENV_PREFIX = "INTEREST_"
CONFIG_ENV = "INTEREST_CONFIG"

DEFAULT_WEIGHTS: dict[str, float] = {
    "browse": 1.0,
    "click": 2.0,
    "favorite": 3.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
}
DEFAULT_ALIASES: dict[str, str] = {
    "view": "browse",
    "pv": "browse",
    "impression_click": "browse",
    "fav": "favorite",
    "like": "favorite",
    "cart": "add_to_cart",
    "addtocart": "add_to_cart",
    "buy": "purchase",
    "transaction": "purchase",
    "order": "purchase",
}

MINUTE_MS = 60_000
DAY_MS = 86_400_000


class ScorerKind(StrEnum):
    local = "local"
    tfserving = "tfserving"


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class BeyondRetention(StrEnum):
    dead_letter = "dead_letter"
    apply = "apply"


class RankingMode(StrEnum):
    process = "process"
    thread = "thread"


class PurchasedPolicy(StrEnum):
    keep = "keep"
    demote = "demote"
    exclude = "exclude"


class Settings(BaseSettings):
    """Every knob of interest-stream. Field ``x`` is read from ``INTEREST_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers")
    kafka_security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_connect_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="how long a command waits for a broker to answer"
    )

    # --- topics and group --------------------------------------------------------------
    app_id: str = Field("interest-stream", description="consumer group / Faust app id")
    topic_events: str = "interest.events"
    topic_dlq: str = "interest.events.dlq"
    topic_recommendations: str = "interest.recommendations"
    events_partitions: int = Field(8, ge=1, le=10_000)
    replication_factor: int = Field(1, ge=1, le=16)
    standby_replicas: int = Field(0, ge=0, le=8)
    kafka_session_timeout_ms: int = Field(
        10_000, ge=3_000, le=300_000, description="how soon a dead worker's partitions move"
    )

    # --- interest arithmetic -------------------------------------------------------------
    half_life_short_ms: int = Field(30 * MINUTE_MS, gt=0)
    half_life_long_ms: int = Field(7 * DAY_MS, gt=0)
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    event_aliases: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALIASES))
    max_categories: int = Field(64, ge=1, le=4096)
    max_items: int = Field(100, ge=0, le=100_000)
    sequence_length: int = Field(
        50, ge=0, le=1000, description="recent events kept per user in event-time order; 0: none"
    )
    dedup_retention_ms: int = Field(
        7 * DAY_MS, ge=0, description="event time ids are remembered for; 0: offsets only"
    )
    dedup_beyond_retention: BeyondRetention = BeyondRetention.dead_letter
    max_event_bytes: int = Field(65_536, ge=256, le=900_000)
    dlq_max_original_bytes: int = Field(
        16_384, ge=0, le=900_000, description="bytes of a rejected value its dead letter carries"
    )
    max_future_ms: int = Field(DAY_MS, ge=0)
    expire_threshold: float = Field(
        0.0, ge=0.0, description="expire users whose long strengths all fell below this; 0 = never"
    )

    # --- rescoring and output --------------------------------------------------------------
    trending_enabled: bool = Field(
        True, description="aggregate trending items per category (candidates for everyone)"
    )
    trending_publish_interval_ms: int = Field(
        1000, ge=50, le=600_000, description="how often changed trending snapshots are published"
    )
    rescore_interval_ms: int = Field(500, ge=10, le=3_600_000)
    rescore_batch_size: int = Field(256, ge=1, le=65_536)
    ranking: RankingMode = Field(
        RankingMode.process,
        description="rank in a child process (the other core) or in a thread of the worker",
    )
    ranking_processes: int = Field(
        1, ge=1, le=64, description="ranking processes per worker (INTEREST_RANKING=process)"
    )
    top_k: int = Field(20, ge=1, le=1000)
    purchased_policy: PurchasedPolicy = PurchasedPolicy.demote
    trending_items: int = Field(
        200, ge=1, le=100_000, description="items kept per category by the trending aggregation"
    )
    candidate_limit: int = Field(
        200, ge=1, le=10_000, description="candidates per user ranked at each rescoring"
    )
    scorer: ScorerKind = ScorerKind.local
    scorer_timeout_ms: int = Field(2000, ge=1)
    tfserving_url: str = "http://localhost:8501"
    tfserving_model_name: str = "interest"
    model_dir: Path | None = None
    model_poll_interval_s: float = Field(10.0, gt=0)
    embedding_dim: int = Field(64, ge=2, le=1024)
    sequence_dim: int = Field(
        32, ge=4, le=1024, description="width of the sequence model (divisible by its heads)"
    )
    sequence_blocks: int = Field(2, ge=1, le=12, description="Transformer blocks of it")
    sequence_heads: int = Field(2, ge=1, le=16, description="attention heads per block")

    # --- worker process ----------------------------------------------------------------------
    data_dir: Path = Path("./data")
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65_535)
    stream_batch_size: int = Field(1000, ge=1, le=100_000)
    log_level: str = "INFO"

    @field_validator("event_weights")
    @classmethod
    def _weights_nonempty(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("must name at least one event type")
        return {k.strip().lower(): float(w) for k, w in v.items()}

    @field_validator("event_aliases")
    @classmethod
    def _aliases_lower(cls, v: dict[str, str]) -> dict[str, str]:
        return {k.strip().lower(): t.strip().lower() for k, t in v.items()}

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        allowed = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if v.upper() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return v.upper()

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for server in v.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("must be host:port[,host:port...]")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        unknown = sorted({t for t in self.event_aliases.values() if t not in self.event_weights})
        if unknown:
            raise ValueError(
                f"event_aliases: aliases point to types without a weight: {', '.join(unknown)}"
            )
        if self.half_life_short_ms > self.half_life_long_ms:
            raise ValueError("half_life_short_ms: must not exceed half_life_long_ms")
        if self.sequence_dim % self.sequence_heads:
            raise ValueError(
                f"sequence_dim: {self.sequence_dim} is not divisible by "
                f"INTEREST_SEQUENCE_HEADS ({self.sequence_heads})"
            )
        sasl = self.kafka_security_protocol in (
            SecurityProtocol.SASL_PLAINTEXT,
            SecurityProtocol.SASL_SSL,
        )
        if sasl and (self.kafka_sasl_username is None or self.kafka_sasl_password is None):
            raise ValueError(
                "kafka_sasl_username: SASL needs INTEREST_KAFKA_SASL_USERNAME and "
                "INTEREST_KAFKA_SASL_PASSWORD"
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
        return (init_settings, env_settings)

    # --- derived views -------------------------------------------------------------------------
    def type_table(self) -> dict[str, str]:
        """Every accepted spelling of an event type -> its canonical name."""
        table = {t: t for t in self.event_weights}
        table.update(self.event_aliases)
        return table

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON-safe values with secrets masked, for logs and metadata."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


def _toml_values(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"{CONFIG_ENV}: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{CONFIG_ENV}: {path} is not valid TOML: {exc}") from None
    section = data.get("interest", data)
    return {str(k).lower(): v for k, v in section.items()}


def _describe(err: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if not str(p).isdigit()]
    name = loc[0] if loc else ""
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not name and ":" in msg:
        name, _, msg = msg.partition(":")
        msg = msg.strip()
    ctx = err.get("ctx") or {}
    if "expected" in ctx and "allowed" not in msg and str(ctx["expected"]) not in msg:
        msg = f"{msg} (allowed: {ctx['expected']})"
    value = err.get("input")
    shown = (
        "" if isinstance(value, dict | type(None)) or "password" in name else f" (got {value!r})"
    )
    env = ENV_PREFIX + name.upper() if name else "settings"
    if err.get("type") == "extra_forbidden":
        return f"{env}: unknown setting"
    return f"{env}: {msg}{shown}"


def load_settings(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings from every source, or raise SettingsError with one readable line."""
    path = config_file or os.environ.get(CONFIG_ENV)
    values: dict[str, Any] = _toml_values(Path(path)) if path else {}
    for key in list(values):
        if ENV_PREFIX + key.upper() in os.environ:
            del values[key]  # the environment outranks the file
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None
    except PydanticSettingsError as exc:  # a value the source itself could not decode
        field = str(exc).split('"')[1] if '"' in str(exc) else ""
        env = ENV_PREFIX + field.upper() if field else "settings"
        raise SettingsError(f"{env}: not valid JSON (e.g. '{{\"browse\": 1.0}}')") from None


# --------------------------------------------------------------------------- the core's view


def interest_config(settings: Settings) -> InterestConfig:
    """The user-state arithmetic's knobs."""
    return InterestConfig(
        half_life_short_ms=settings.half_life_short_ms,
        half_life_long_ms=settings.half_life_long_ms,
        max_categories=settings.max_categories,
        max_items=settings.max_items,
        sequence_length=settings.sequence_length,
    )


def dedup_config(settings: Settings) -> DedupConfig:
    """How long event ids are remembered, and what an older event gets."""
    return DedupConfig(
        retention_ms=settings.dedup_retention_ms, beyond=settings.dedup_beyond_retention.value
    )


def trend_config(settings: Settings) -> TrendConfig:
    """The trending aggregation's knobs: the user state's half-lives, its own bound."""
    return TrendConfig(
        half_life_short_ms=settings.half_life_short_ms,
        half_life_long_ms=settings.half_life_long_ms,
        max_items=settings.trending_items,
    )


def event_parser(settings: Settings, catalog: Mapping[str, str] | None = None) -> EventParser:
    """The parser the worker uses: weights, aliases and limits from the settings;
    ``catalog`` (item -> category) fills in absent categories."""
    return EventParser(
        settings.event_weights,
        settings.event_aliases,
        max_bytes=settings.max_event_bytes,
        max_future_ms=settings.max_future_ms,
        catalog=catalog,
    )
