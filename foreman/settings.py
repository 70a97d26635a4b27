"""Configuration: environment variables, each also a ``foreman serve`` flag.

:data:`OPTIONS` is the single table of settings; the CLI builds its flags from it
and the README's configuration table mirrors it. Values arrive as strings (from
the environment or a flag) and are checked here, so that a bad value stops
start-up with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import platformdirs

from .dataplane.names import normalize

__all__ = ["GRACE_MARGIN", "OPTIONS", "ConfigError", "Option", "Settings"]

#: Seconds the server waits beyond foreman's grace for the final answers to go out.
GRACE_MARGIN = 2.0


class ConfigError(ValueError):
    """A setting has an invalid value. ``str()`` is the one-line message for the user."""

    def __init__(self, option: Option, value: str, problem: str) -> None:
        super().__init__(f"invalid {option.env} ({option.flag}) {value!r}: {problem}")
        self.option = option


def _url(value: str) -> str:
    try:
        url = httpx2.URL(value)
    except httpx2.InvalidURL as exc:
        raise ValueError(str(exc)) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("expected an http:// or https:// URL with a host")
    return str(url).rstrip("/")


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("expected a positive, finite number of seconds")
    return seconds


def _count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if count < 0:
        raise ValueError("expected zero or more")
    return count


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return value


def _model(value: str) -> str:
    if normalize(value) is None:
        raise ValueError("not a valid Ollama model name")
    return value


def _secret(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value):
        raise ValueError("a bearer token must be non-empty and contain no spaces")
    return value


_SIZE = re.compile(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)


def _database_url(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep or not rest.strip("/"):
        raise ValueError("expected a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL")
    return value


def _size(value: str) -> int:
    """Bytes, with an optional binary unit: ``104857600``, ``100MiB``, ``100M``, ``1GiB``."""
    match = _SIZE.fullmatch(value)
    if match is None or int(match[1]) == 0:
        raise ValueError("expected a positive size in bytes, e.g. 104857600, 100MiB or 1GiB")
    unit = (match[2] or "b")[0].lower()
    return int(match[1]) << {"b": 0, "k": 10, "m": 20, "g": 30}[unit]


def _origins(value: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in value.split(",") if o.strip())
    for origin in origins:
        if "://" not in origin and origin != "*":
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], * wildcards)")
    return origins


def _format(value: str) -> str:
    if value.lower() not in ("text", "json"):
        raise ValueError("expected text or json")
    return value.lower()


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1 or 0 (true/false, yes/no, on/off)")


def _path(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a path")
    return os.path.abspath(os.path.expanduser(value))


def _file(value: str) -> str:
    path = _path(value)
    if not os.path.isfile(path):
        raise ValueError("no such file")
    return path


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)


def _duration(value: str) -> float:
    """Seconds, or a number with a unit: ``3600``, ``90s``, ``30m``, ``12h``, ``7d``."""
    match = _DURATION.fullmatch(value)
    if match is None or float(match[1]) <= 0:
        raise ValueError("expected a positive duration: seconds, or 90s, 30m, 12h, 7d")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2].lower()]


def _management(value: str) -> str:
    if value.lower() not in ("admins", "users"):
        raise ValueError("expected admins or users")
    return value.lower()


_HOST = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?", re.IGNORECASE)


def _networks(value: str) -> tuple[str, ...]:
    """CIDRs (``192.168.1.0/24``, ``fd00::/8``), addresses and host names, comma-separated."""
    entries = tuple(entry.strip().lower() for entry in value.split(",") if entry.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOST.fullmatch(entry):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
    return entries


def _level(value: str) -> str:
    level = value.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected debug, info, warning or error")
    return level


@dataclass(frozen=True)
class Option:
    """One setting: its field on :class:`Settings`, variable, flag, default and parser."""

    field: str
    env: str
    flag: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def metavar(self) -> str:
        """What ``--help`` shows for the value, by its parser."""
        return _METAVARS[self.parse]


_METAVARS: dict[Callable[[str], Any], str] = {
    _url: "URL",
    _database_url: "URL",
    _secret: "TOKEN",
    _model: "MODEL",
    _seconds: "SECONDS",
    _listen: "HOST:PORT",
    _count: "N",
    _level: "LEVEL",
    _size: "SIZE",
    _origins: "ORIGINS",
    _format: "FORMAT",
    _flag: "0|1",
    _path: "DIR",
    _file: "FILE",
    _duration: "DURATION",
    _management: "WHO",
    _networks: "NETWORKS",
}


OPTIONS: tuple[Option, ...] = (
    Option(
        "ollama_url",
        "FOREMAN_OLLAMA_URL",
        "--ollama-url",
        "http://127.0.0.1:11434",
        _url,
        "Base URL of the Ollama target.",
    ),
    Option(
        "ollama_token",
        "FOREMAN_OLLAMA_TOKEN",
        "--ollama-token",
        None,
        _secret,
        "Bearer token sent to the target (if it sits behind an auth proxy).",
        secret=True,
    ),
    Option(
        "token",
        "FOREMAN_TOKEN",
        "--token",
        None,
        _secret,
        "Bearer token clients must send; every endpoint but /healthz and /readyz then needs it.",
        secret=True,
    ),
    Option(
        "embed_model",
        "FOREMAN_EMBED_MODEL",
        "--embed-model",
        None,
        _model,
        "Embedding model kept warm in the second slot (keep_alive -1); unset: no warm-up.",
    ),
    Option(
        "poll_interval",
        "FOREMAN_POLL_INTERVAL",
        "--poll-interval",
        "30",
        _seconds,
        "Seconds between /api/tags polls.",
    ),
    Option(
        "ps_interval",
        "FOREMAN_PS_INTERVAL",
        "--ps-interval",
        "10",
        _seconds,
        "Seconds between /api/ps residency checks.",
    ),
    Option(
        "listen", "FOREMAN_LISTEN", "--listen", "127.0.0.1:8080", _listen, "HOST:PORT to serve on."
    ),
    Option(
        "max_queue",
        "FOREMAN_MAX_QUEUE",
        "--max-queue",
        "512",
        _count,
        "Chat/generate requests allowed to wait at the gate; one more gets 503.",
    ),
    Option(
        "idle_timeout",
        "FOREMAN_IDLE_TIMEOUT",
        "--idle-timeout",
        "300",
        _seconds,
        "Seconds the target may stay silent (model load, between stream chunks) "
        "before foreman gives up on the request.",
    ),
    Option(
        "response_timeout",
        "FOREMAN_RESPONSE_TIMEOUT",
        "--response-timeout",
        "900",
        _seconds,
        'Seconds a "stream": false chat or generate may take to answer in full '
        "(model load included); it holds the gate meanwhile.",
    ),
    Option(
        "control_timeout",
        "FOREMAN_CONTROL_TIMEOUT",
        "--control-timeout",
        "5",
        _seconds,
        "Seconds foreman's own calls to the target (/api/tags, /api/ps) and a relayed "
        "GET /api/tags may take; /api/tags then answers from the last inventory.",
    ),
    Option(
        "max_body",
        "FOREMAN_MAX_BODY",
        "--max-body",
        "100MiB",
        _size,
        "Largest chat, generate or embed request body foreman reads; a larger one gets 413. "
        "Other /api/ bodies (blobs) stream through unbounded.",
    ),
    Option(
        "client_timeout",
        "FOREMAN_CLIENT_TIMEOUT",
        "--client-timeout",
        "60",
        _seconds,
        "Seconds a write to a client may make no progress (a client that stopped reading)"
        " before foreman closes its connection: the target's generation is aborted and"
        " the gate freed.",
    ),
    Option(
        "body_timeout",
        "FOREMAN_BODY_TIMEOUT",
        "--body-timeout",
        "60",
        _seconds,
        "Seconds a chat, embed or control-plane request body may take to arrive whole"
        " (other bodies: to make progress); after it the answer is 408 and the connection"
        " closes.",
    ),
    Option(
        "max_reading_bytes",
        "FOREMAN_MAX_READING_BYTES",
        "--max-reading-bytes",
        "256MiB",
        _size,
        "Total size of the request bodies being read at once; a body that would go beyond"
        " it gets 503 with Retry-After (memory stays bounded however many clients send).",
    ),
    Option(
        "max_waiting_bytes",
        "FOREMAN_MAX_WAITING_BYTES",
        "--max-waiting-bytes",
        "1GiB",
        _size,
        "Total size of the bodies held by chats waiting at the gate; beyond it a chat "
        "gets Ollama's 503.",
    ),
    Option(
        "origins",
        "FOREMAN_ORIGINS",
        "--origins",
        None,
        _origins,
        "Browser origins allowed besides the local ones, comma-separated, * wildcards "
        "(as OLLAMA_ORIGINS); any other Origin gets 403.",
    ),
    Option(
        "connect_timeout",
        "FOREMAN_CONNECT_TIMEOUT",
        "--connect-timeout",
        "5",
        _seconds,
        "Seconds to wait for a connection to the target.",
    ),
    Option(
        "grace",
        "FOREMAN_GRACE",
        "--grace",
        "30",
        _seconds,
        "On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cut.",
    ),
    Option(
        "log_level",
        "FOREMAN_LOG_LEVEL",
        "--log-level",
        "info",
        _level,
        "debug, info, warning or error.",
    ),
    Option(
        "log_format",
        "FOREMAN_LOG_FORMAT",
        "--log-format",
        "text",
        _format,
        "text (one line per record) or json (one JSON object per line).",
    ),
    Option(
        "metrics_public",
        "FOREMAN_METRICS_PUBLIC",
        "--metrics-public",
        "0",
        _flag,
        "1: serve /metrics without FOREMAN_TOKEN (for a scraper); 0: protect it like /api/.",
    ),
    Option(
        "data_dir",
        "FOREMAN_DATA_DIR",
        "--data-dir",
        None,
        _path,
        "Directory for foreman's state, created on start "
        "(default: the platform's user data directory, e.g. ~/.local/share/foreman).",
    ),
    Option(
        "database_url",
        "FOREMAN_DATABASE_URL",
        "--database-url",
        None,
        _database_url,
        "PostgreSQL database (postgresql://…) holding foreman's state, shared by several"
        " replicas; needs FOREMAN_SECRET_KEY. Unset: SQLite in the data directory.",
        secret=True,
    ),
    Option(
        "max_jobs",
        "FOREMAN_MAX_JOBS",
        "--max-jobs",
        "100000",
        _count,
        "Queued jobs stored at most; one more submitted gets 429 with Retry-After.",
    ),
    Option(
        "embed_job_concurrency",
        "FOREMAN_EMBED_JOB_CONCURRENCY",
        "--embed-job-concurrency",
        "4",
        _count,
        "Embed jobs run at once (they do not take the chat slot).",
    ),
    Option(
        "job_max_attempts",
        "FOREMAN_JOB_MAX_ATTEMPTS",
        "--job-max-attempts",
        "3",
        _count,
        "Runs a job may start; one interrupted by foreman's death after that fails "
        '("interrupted").',
    ),
    Option(
        "job_retention",
        "FOREMAN_JOB_RETENTION",
        "--job-retention",
        "7d",
        _duration,
        "How long finished jobs and their artifacts are kept (e.g. 7d, 12h, 3600).",
    ),
    Option(
        "webhook_secret",
        "FOREMAN_WEBHOOK_SECRET",
        "--webhook-secret",
        None,
        _secret,
        "If set, state webhooks carry X-Foreman-Signature: sha256=<HMAC of the body>.",
        secret=True,
    ),
    Option(
        "heartbeat_interval",
        "FOREMAN_HEARTBEAT_INTERVAL",
        "--heartbeat-interval",
        "30",
        _seconds,
        "Seconds between checks of each backend (a backend is healthy after a success"
        " within the last 60 s).",
    ),
    Option(
        "secret_key",
        "FOREMAN_SECRET_KEY",
        "--secret-key",
        None,
        _secret,
        "Key that encrypts backends' API keys at rest; unset: a generated key file"
        " (secret.key, mode 0600) in the data directory.",
        secret=True,
    ),
    Option(
        "allow_unreadable_keys",
        "FOREMAN_ALLOW_UNREADABLE_KEYS",
        "--allow-unreadable-keys",
        "0",
        _flag,
        "1: start even when stored API keys do not open with the secret (secret.key lost"
        " or replaced): those backends run without their keys, and the log says so;"
        " 0: refuse to start.",
    ),
    Option(
        "tls_cert",
        "FOREMAN_TLS_CERT",
        "--tls-cert",
        None,
        _file,
        "PEM certificate (chain) to serve HTTPS; needs FOREMAN_TLS_KEY.",
    ),
    Option(
        "tls_key",
        "FOREMAN_TLS_KEY",
        "--tls-key",
        None,
        _file,
        "PEM private key for FOREMAN_TLS_CERT.",
        secret=True,
    ),
    Option(
        "user_networks",
        "FOREMAN_USER_NETWORKS",
        "--user-networks",
        None,
        _networks,
        "Networks (CIDRs) and host names ordinary users' backends and webhooks may reach"
        " besides public addresses, comma-separated (e.g. 192.168.1.0/24,ollama.lan).",
    ),
    Option(
        "model_management",
        "FOREMAN_MODEL_MANAGEMENT",
        "--model-management",
        "admins",
        _management,
        "Who may pull, push, delete, copy and create models and upload blobs: admins or"
        " users (everyone with a key).",
    ),
    Option(
        "max_backends_per_user",
        "FOREMAN_MAX_BACKENDS_PER_USER",
        "--max-backends-per-user",
        "20",
        _count,
        "Backends one user may own.",
    ),
    Option(
        "max_aliases_per_user",
        "FOREMAN_MAX_ALIASES_PER_USER",
        "--max-aliases-per-user",
        "100",
        _count,
        "Model aliases one user may keep.",
    ),
    Option(
        "max_name_length",
        "FOREMAN_MAX_NAME_LENGTH",
        "--max-name-length",
        "64",
        _count,
        "Characters in a backend's name (a user's: 64).",
    ),
    Option(
        "max_endpoint_length",
        "FOREMAN_MAX_ENDPOINT_LENGTH",
        "--max-endpoint-length",
        "2048",
        _count,
        "Characters in a backend's endpoint URL.",
    ),
    Option(
        "max_key_length",
        "FOREMAN_MAX_KEY_LENGTH",
        "--max-key-length",
        "1024",
        _count,
        "Characters in a backend's API key.",
    ),
    Option(
        "max_alias_length",
        "FOREMAN_MAX_ALIAS_LENGTH",
        "--max-alias-length",
        "200",
        _count,
        "Characters in a model alias and in the model it names.",
    ),
)


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
