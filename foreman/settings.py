"""Configuration: environment variables, each also a ``foreman serve`` flag.

:class:`Settings` holds the values, built from :data:`foreman.options.OPTIONS` (the
single table of settings, re-exported here); the values' parsers are in
:mod:`foreman.values`. Values arrive as strings (from the environment or a flag) and are
checked on the way in, so that a bad value stops start-up with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import platformdirs

from .options import OPTIONS
from .values import Option

__all__ = ["GRACE_MARGIN", "OPTIONS", "ConfigError", "Settings"]

#: Seconds the server waits beyond foreman's grace for the final answers to go out.
GRACE_MARGIN = 2.0


class ConfigError(ValueError):
    """A setting has an invalid value. ``str()`` is the one-line message for the user."""

    def __init__(self, option: Option, value: str, problem: str) -> None:
        super().__init__(f"invalid {option.env} ({option.flag}) {value!r}: {problem}")
        self.option = option


def default_data_dir() -> str:
    """The platform's user data directory for foreman (``~/.local/share/foreman`` on Linux)."""
    return platformdirs.user_data_dir("foreman", appauthor=False)


@dataclass(frozen=True)
class Settings:
    """foreman's configuration. Times are in seconds; ``listen`` is ``HOST:PORT``."""

    ollama_url: str = "http://127.0.0.1:11434"
    ollama_token: str | None = None
    token: str | None = None
    embed_model: str | None = None
    poll_interval: float = 30.0
    ps_interval: float = 10.0
    listen: str = "127.0.0.1:8080"
    max_queue: int = 512
    idle_timeout: float = 300.0
    response_timeout: float = 900.0
    control_timeout: float = 5.0
    max_body: int = 100 << 20
    max_waiting_bytes: int = 1 << 30
    client_timeout: float = 60.0
    body_timeout: float = 60.0
    max_reading_bytes: int = 256 << 20
    origins: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    grace: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_public: bool = False
    data_dir: str | None = None
    database_url: str | None = None
    max_jobs: int = 100_000
    embed_job_concurrency: int = 4
    job_max_attempts: int = 3
    job_retention: float = 7 * 86400.0
    webhook_secret: str | None = None
    heartbeat_interval: float = 30.0
    secret_key: str | None = None
    allow_unreadable_keys: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    user_networks: tuple[str, ...] = ()
    model_management: str = "admins"
    max_backends_per_user: int = 20
    max_aliases_per_user: int = 100
    max_name_length: int = 64
    max_endpoint_length: int = 2048
    max_key_length: int = 1024
    max_alias_length: int = 200

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            option = next(
                o for o in OPTIONS if o.field == ("tls_key" if self.tls_cert else "tls_cert")
            )
            raise ConfigError(option, "<unset>", "FOREMAN_TLS_CERT and FOREMAN_TLS_KEY go together")
        if self.database_url and not self.secret_key:  # each replica's key file would differ
            option = next(o for o in OPTIONS if o.field == "secret_key")
            raise ConfigError(option, "<unset>", "required with FOREMAN_DATABASE_URL")

    @property
    def data_path(self) -> str:
        """``data_dir``, or the platform's user data directory for foreman."""
        return self.data_dir or default_data_dir()

    @property
    def store_location(self) -> str:
        """Where the store lives: ``database_url``, or ``foreman.db`` in the data directory."""
        return self.database_url or os.path.join(self.data_path, "foreman.db")

    @property
    def scheme(self) -> str:
        """``https`` when TLS is configured, else ``http``."""
        return "https" if self.tls_cert else "http"

    @classmethod
    def from_strings(cls, values: Mapping[str, str | None]) -> Settings:
        """Build settings from raw strings keyed by field name; None or absent means default.

        Raises:
            ConfigError: a value does not parse; the message names the variable and flag.
        """
        parsed: dict[str, Any] = {}
        for option in OPTIONS:
            raw = values.get(option.field)
            if raw is None or (raw == "" and option.default is None):
                continue
            try:
                parsed[option.field] = option.parse(raw)
            except ValueError as exc:
                shown = "<hidden>" if option.secret else raw
                raise ConfigError(option, shown, str(exc)) from None
        return cls(**parsed)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from ``FOREMAN_*`` variables (see :data:`OPTIONS`)."""
        return cls.from_strings({o.field: environ.get(o.env) for o in OPTIONS})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
