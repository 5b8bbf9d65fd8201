"""Typed server configuration, from environment variables and CLI flags.

Every setting is an environment variable ``PROMPTGATE_<NAME>`` (e.g.
``PROMPTGATE_PORT``); ``promptgate serve`` flags override the environment.
The provider keys also read the providers' usual variables
(``OPENAI_API_KEY``, ``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from promptgate.providers.azure_openai import DEFAULT_API_VERSION as AZURE_OPENAI_API_VERSION

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
GEMINI_DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"


class Settings(BaseSettings):
    """All server settings. See the configuration table in the README."""

    # Errors name the setting but never echo its value (keys and secrets).
    model_config = SettingsConfigDict(
        env_prefix="PROMPTGATE_", extra="ignore", hide_input_in_errors=True
    )

    # Listening and transport
    host: str = "127.0.0.1"
    port: int = 50051
    grace_period_s: float = Field(30.0, ge=0)
    drain_notice_s: float = Field(0.5, ge=0)
    max_receive_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_send_message_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    keepalive_time_s: float = Field(30.0, gt=0)
    keepalive_timeout_s: float = Field(10.0, gt=0)
    keepalive_min_ping_interval_s: float = Field(10.0, gt=0)
    max_concurrent_streams: int = Field(10_000, ge=1)
    max_pending_requests: int = Field(10_000, ge=1)
    workers: int = Field(1, ge=1, le=64)
    event_loop: str = Field("asyncio", pattern="^(asyncio|uvloop)$")
    reuse_port: bool = False
    # Prometheus /metrics over HTTP on this port (same host); off when unset,
    # except with --dev (then a free port, printed). 0 picks a free port.
    metrics_port: int | None = Field(None, ge=0, le=65535)

    # Storage
    database_url: str = "sqlite+aiosqlite:///./data/promptgate.db"
    database_echo: bool = False
    record_batch_max: int = Field(512, ge=1)
    record_executions: bool = True

    # Execution
    max_prompt_chars: int = Field(1_000_000, ge=1)
    max_inputs: int = Field(256, ge=1)
    template_timeout_s: float = Field(1.0, gt=0)
    default_timeout_s: float = Field(600.0, gt=0)
    default_release_tag: str = "production"
    resolve_cache_ttl_s: float = Field(1.0, ge=0)

    # Routing and cache
    retry_max_attempts: int = Field(2, ge=1, le=10)
    retry_initial_backoff_s: float = Field(0.5, ge=0)
    retry_max_backoff_s: float = Field(8.0, ge=0)
    attempt_timeout_s: float | None = Field(None, gt=0)
    cooldown_failures: int = Field(3, ge=1)
    cooldown_s: float = Field(30.0, ge=0)
    cache_backend: str = Field("memory", pattern="^(memory|redis)$")
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_max_entries: int = Field(10_000, ge=1)
    cache_default_ttl_s: float = Field(300.0, gt=0)

    # Auth and limits
    limits_backend: str = Field("memory", pattern="^(memory|redis)$")
    auth_cache_ttl_s: float = Field(5.0, ge=0)
    limits_lease_ttl_s: float = Field(30.0, gt=0)
    limits_redis_prefix: str = "promptgate:limits:"

    # Batches
    batch_max_items: int = Field(10_000, ge=1)
    batch_max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    batch_default_concurrency: int = Field(16, ge=1)
    batch_max_concurrency: int = Field(256, ge=1)
    batch_worker_concurrency: int = Field(64, ge=1)
    batch_poll_interval_s: float = Field(0.5, gt=0)
    batch_heartbeat_s: float = Field(2.0, gt=0)
    batch_stale_after_s: float = Field(10.0, gt=0)
    webhook_secret: str | None = None
    webhook_allow_private_networks: bool = False
    webhook_max_attempts: int = Field(6, ge=1)
    webhook_backoff_base_s: float = Field(1.0, ge=0)
    webhook_backoff_max_s: float = Field(300.0, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)

    # Providers
    openai_api_key: str | None = Field(
        None, validation_alias=AliasChoices("PROMPTGATE_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str = Field(
        OPENAI_DEFAULT_BASE_URL,
        validation_alias=AliasChoices("PROMPTGATE_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    openai_models: list[str] = Field(default_factory=list)
    anthropic_api_key: str | None = Field(
        None, validation_alias=AliasChoices("PROMPTGATE_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str = ANTHROPIC_DEFAULT_BASE_URL
    anthropic_models: list[str] = Field(default_factory=list)
    gemini_api_key: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "PROMPTGATE_GEMINI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"
        ),
    )
    gemini_base_url: str = GEMINI_DEFAULT_BASE_URL
    gemini_models: list[str] = Field(default_factory=list)
    # Azure OpenAI: on when both the endpoint and the key are set.
    azure_openai_endpoint: str | None = None
    azure_openai_api_key: str | None = None
    azure_openai_api_version: str = AZURE_OPENAI_API_VERSION
    # Model name -> deployment id: "gpt-4o=my-gpt4o,gpt-4o-mini=mini" (or a JSON object).
    azure_openai_deployments: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    # Provider HTTP (aiohttp); proxies come from HTTPS_PROXY / HTTP_PROXY / NO_PROXY.
    http_connect_timeout_s: float = Field(10.0, gt=0)
    http_max_connections: int = Field(1000, ge=1)
    http_max_connections_per_host: int = Field(0, ge=0)
    http_keepalive_expiry_s: float = Field(4.0, gt=0)
    http_ca_bundle: str | None = None
    prices_file: str | None = None

    # Developer mode: seed a demo prompt and print example commands.
    dev: bool = False
    log_level: str = "INFO"
    # Logs: "text" or "json" (one object per line); one access line per RPC.
    log_format: str = Field("text", pattern="^(text|json)$")
    access_log: bool = True
    workspace: str = "default"

    @field_validator(
        "openai_api_key",
        "anthropic_api_key",
        "gemini_api_key",
        "azure_openai_api_key",
        "azure_openai_api_version",
    )
    @classmethod
    def _sendable_key(cls, value: str | None) -> str | None:
        # Keys are sent as header values on connections shared by every workspace.
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("holds a control character (a trailing newline?)")
        return value

    @field_validator("azure_openai_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        parts = urlsplit(value or "")
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError("is not an http(s) URL, e.g. https://NAME.openai.azure.com")
        return value

    @field_validator("azure_openai_deployments", mode="before")
    @classmethod
    def _deployment_map(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        deployments: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in text.split(","))):
            model, equals, deployment = (side.strip() for side in entry.partition("="))
            if not equals or not model or not deployment:
                raise ValueError(f"{entry!r} is not MODEL=DEPLOYMENT")
            if model in deployments:
                raise ValueError(f"model {model!r} is listed twice")
            deployments[model] = deployment
        return deployments

    @model_validator(mode="after")
    def _azure_openai_complete(self) -> Settings:
        if bool(self.azure_openai_endpoint) != bool(self.azure_openai_api_key):
            raise ValueError(
                "PROMPTGATE_AZURE_OPENAI_ENDPOINT and PROMPTGATE_AZURE_OPENAI_API_KEY "
                "are set together (one of them is missing)"
            )
        return self

    @property
    def azure_openai_enabled(self) -> bool:
        """The azure-openai provider is on when it has an endpoint and a key."""
        return bool(self.azure_openai_endpoint) and bool(self.azure_openai_api_key)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``PROMPTGATE_METRICS_PORT=`` (empty) leaves metrics off."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port")
        return self

    @property
    def metrics_listen_port(self) -> int | None:
        """The port /metrics listens on (0: a free one), or None when metrics are off."""
        if self.metrics_port is None and self.dev:
            return 0
        return self.metrics_port

    @property
    def anthropic_enabled(self) -> bool:
        """The anthropic provider is on when it has a key or points at a custom server."""
        return bool(self.anthropic_api_key) or self.anthropic_base_url != ANTHROPIC_DEFAULT_BASE_URL

    @property
    def gemini_enabled(self) -> bool:
        """The gemini provider is on when it has a key or points at a custom server."""
        return bool(self.gemini_api_key) or self.gemini_base_url != GEMINI_DEFAULT_BASE_URL

    @property
    def openai_enabled(self) -> bool:
        """The openai provider is on when it has a key or points at a custom server."""
        return bool(self.openai_api_key) or self.openai_base_url != OPENAI_DEFAULT_BASE_URL
