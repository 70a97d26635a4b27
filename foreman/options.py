"""The settings' table: :data:`OPTIONS`, one :class:`~foreman.values.Option` per setting.

Each is an environment variable and a ``foreman serve`` flag; the CLI builds its flags
from this table and the README's configuration table mirrors it. The values' parsers
are in :mod:`foreman.values`; :class:`foreman.settings.Settings` holds the result.
"""

from __future__ import annotations

from . import values as parse
from .values import Option

__all__ = ["OPTIONS"]


OPTIONS: tuple[Option, ...] = (
    Option(
        "ollama_url",
        "FOREMAN_OLLAMA_URL",
        "--ollama-url",
        "http://127.0.0.1:11434",
        parse.url,
        "Base URL of the Ollama target.",
    ),
    Option(
        "ollama_token",
        "FOREMAN_OLLAMA_TOKEN",
        "--ollama-token",
        None,
        parse.secret,
        "Bearer token sent to the target (if it sits behind an auth proxy).",
        secret=True,
    ),
    Option(
        "token",
        "FOREMAN_TOKEN",
        "--token",
        None,
        parse.secret,
        "Bearer token clients must send; every endpoint but /healthz and /readyz then needs it.",
        secret=True,
    ),
    Option(
        "embed_model",
        "FOREMAN_EMBED_MODEL",
        "--embed-model",
        None,
        parse.model,
        "Embedding model kept warm in the second slot (keep_alive -1); unset: no warm-up.",
    ),
    Option(
        "poll_interval",
        "FOREMAN_POLL_INTERVAL",
        "--poll-interval",
        "30",
        parse.seconds,
        "Seconds between /api/tags polls.",
    ),
    Option(
        "ps_interval",
        "FOREMAN_PS_INTERVAL",
        "--ps-interval",
        "10",
        parse.seconds,
        "Seconds between /api/ps residency checks.",
    ),
    Option(
        "listen",
        "FOREMAN_LISTEN",
        "--listen",
        "127.0.0.1:8080",
        parse.listen,
        "HOST:PORT to serve on.",
    ),
    Option(
        "max_queue",
        "FOREMAN_MAX_QUEUE",
        "--max-queue",
        "512",
        parse.count,
        "Chat/generate requests allowed to wait at the gate; one more gets 503.",
    ),
    Option(
        "idle_timeout",
        "FOREMAN_IDLE_TIMEOUT",
        "--idle-timeout",
        "300",
        parse.seconds,
        "Seconds the target may stay silent (model load, between stream chunks) "
        "before foreman gives up on the request.",
    ),
    Option(
        "response_timeout",
        "FOREMAN_RESPONSE_TIMEOUT",
        "--response-timeout",
        "900",
        parse.seconds,
        'Seconds a "stream": false chat or generate may take to answer in full '
        "(model load included); it holds the gate meanwhile.",
    ),
    Option(
        "control_timeout",
        "FOREMAN_CONTROL_TIMEOUT",
        "--control-timeout",
        "5",
        parse.seconds,
        "Seconds foreman's own calls to the target (/api/tags, /api/ps) and a relayed "
        "GET /api/tags may take; /api/tags then answers from the last inventory.",
    ),
    Option(
        "max_body",
        "FOREMAN_MAX_BODY",
        "--max-body",
        "100MiB",
        parse.size,
        "Largest chat, generate or embed request body foreman reads; a larger one gets 413. "
        "Other /api/ bodies (blobs) stream through unbounded.",
    ),
    Option(
        "client_timeout",
        "FOREMAN_CLIENT_TIMEOUT",
        "--client-timeout",
        "60",
        parse.seconds,
        "Seconds a write to a client may make no progress (a client that stopped reading)"
        " before foreman closes its connection: the target's generation is aborted and"
        " the gate freed.",
    ),
    Option(
        "body_timeout",
        "FOREMAN_BODY_TIMEOUT",
        "--body-timeout",
        "60",
        parse.seconds,
        "Seconds a chat, embed or control-plane request body may take to arrive whole"
        " (other bodies: to make progress); after it the answer is 408 and the connection"
        " closes.",
    ),
    Option(
        "max_reading_bytes",
        "FOREMAN_MAX_READING_BYTES",
        "--max-reading-bytes",
        "256MiB",
        parse.size,
        "Total size of the request bodies being read at once; a body that would go beyond"
        " it gets 503 with Retry-After (memory stays bounded however many clients send).",
    ),
    Option(
        "max_waiting_bytes",
        "FOREMAN_MAX_WAITING_BYTES",
        "--max-waiting-bytes",
        "1GiB",
        parse.size,
        "Total size of the bodies held by chats waiting at the gate; beyond it a chat "
        "gets Ollama's 503.",
    ),
    Option(
        "origins",
        "FOREMAN_ORIGINS",
        "--origins",
        None,
        parse.origins,
        "Browser origins allowed besides the local ones, comma-separated, * wildcards "
        "(as OLLAMA_ORIGINS); any other Origin gets 403.",
    ),
    Option(
        "connect_timeout",
        "FOREMAN_CONNECT_TIMEOUT",
        "--connect-timeout",
        "5",
        parse.seconds,
        "Seconds to wait for a connection to the target.",
    ),
    Option(
        "grace",
        "FOREMAN_GRACE",
        "--grace",
        "30",
        parse.seconds,
        "On SIGINT/SIGTERM, seconds in-flight requests get to finish before they are cut.",
    ),
    Option(
        "log_level",
        "FOREMAN_LOG_LEVEL",
        "--log-level",
        "info",
        parse.level,
        "debug, info, warning or error.",
    ),
    Option(
        "log_format",
        "FOREMAN_LOG_FORMAT",
        "--log-format",
        "text",
        parse.log_format,
        "text (one line per record) or json (one JSON object per line).",
    ),
    Option(
        "metrics_public",
        "FOREMAN_METRICS_PUBLIC",
        "--metrics-public",
        "0",
        parse.flag,
        "1: serve /metrics without FOREMAN_TOKEN (for a scraper); 0: protect it like /api/.",
    ),
    Option(
        "data_dir",
        "FOREMAN_DATA_DIR",
        "--data-dir",
        None,
        parse.path,
        "Directory for foreman's state, created on start "
        "(default: the platform's user data directory, e.g. ~/.local/share/foreman).",
    ),
    Option(
        "database_url",
        "FOREMAN_DATABASE_URL",
        "--database-url",
        None,
        parse.database_url,
        "PostgreSQL database (postgresql://…) holding foreman's state, shared by several"
        " replicas; needs FOREMAN_SECRET_KEY. Unset: SQLite in the data directory.",
        secret=True,
    ),
    Option(
        "max_jobs",
        "FOREMAN_MAX_JOBS",
        "--max-jobs",
        "100000",
        parse.count,
        "Queued jobs stored at most; one more submitted gets 429 with Retry-After.",
    ),
    Option(
        "embed_job_concurrency",
        "FOREMAN_EMBED_JOB_CONCURRENCY",
        "--embed-job-concurrency",
        "4",
        parse.count,
        "Embed jobs run at once (they do not take the chat slot).",
    ),
    Option(
        "job_max_attempts",
        "FOREMAN_JOB_MAX_ATTEMPTS",
        "--job-max-attempts",
        "3",
        parse.count,
        "Runs a job may start; one interrupted by foreman's death after that fails "
        '("interrupted").',
    ),
    Option(
        "job_retention",
        "FOREMAN_JOB_RETENTION",
        "--job-retention",
        "7d",
        parse.duration,
        "How long finished jobs and their artifacts are kept (e.g. 7d, 12h, 3600).",
    ),
    Option(
        "webhook_secret",
        "FOREMAN_WEBHOOK_SECRET",
        "--webhook-secret",
        None,
        parse.secret,
        "If set, state webhooks carry X-Foreman-Signature: sha256=<HMAC of the body>.",
        secret=True,
    ),
    Option(
        "heartbeat_interval",
        "FOREMAN_HEARTBEAT_INTERVAL",
        "--heartbeat-interval",
        "30",
        parse.seconds,
        "Seconds between checks of each backend (a backend is healthy after a success"
        " within the last 60 s).",
    ),
    Option(
        "secret_key",
        "FOREMAN_SECRET_KEY",
        "--secret-key",
        None,
        parse.secret,
        "Key that encrypts backends' API keys at rest; unset: a generated key file"
        " (secret.key, mode 0600) in the data directory.",
        secret=True,
    ),
    Option(
        "allow_unreadable_keys",
        "FOREMAN_ALLOW_UNREADABLE_KEYS",
        "--allow-unreadable-keys",
        "0",
        parse.flag,
        "1: start even when stored API keys do not open with the secret (secret.key lost"
        " or replaced): those backends run without their keys, and the log says so;"
        " 0: refuse to start.",
    ),
    Option(
        "tls_cert",
        "FOREMAN_TLS_CERT",
        "--tls-cert",
        None,
        parse.file,
        "PEM certificate (chain) to serve HTTPS; needs FOREMAN_TLS_KEY.",
    ),
    Option(
        "tls_key",
        "FOREMAN_TLS_KEY",
        "--tls-key",
        None,
        parse.file,
        "PEM private key for FOREMAN_TLS_CERT.",
        secret=True,
    ),
    Option(
        "user_networks",
        "FOREMAN_USER_NETWORKS",
        "--user-networks",
        None,
        parse.networks,
        "Networks (CIDRs) and host names ordinary users' backends and webhooks may reach"
        " besides public addresses, comma-separated (e.g. 192.168.1.0/24,ollama.lan).",
    ),
    Option(
        "model_management",
        "FOREMAN_MODEL_MANAGEMENT",
        "--model-management",
        "admins",
        parse.management,
        "Who may pull, push, delete, copy and create models and upload blobs: admins or"
        " users (everyone with a key).",
    ),
    Option(
        "max_backends_per_user",
        "FOREMAN_MAX_BACKENDS_PER_USER",
        "--max-backends-per-user",
        "20",
        parse.count,
        "Backends one user may own.",
    ),
    Option(
        "max_aliases_per_user",
        "FOREMAN_MAX_ALIASES_PER_USER",
        "--max-aliases-per-user",
        "100",
        parse.count,
        "Model aliases one user may keep.",
    ),
    Option(
        "max_name_length",
        "FOREMAN_MAX_NAME_LENGTH",
        "--max-name-length",
        "64",
        parse.count,
        "Characters in a backend's name (a user's: 64).",
    ),
    Option(
        "max_endpoint_length",
        "FOREMAN_MAX_ENDPOINT_LENGTH",
        "--max-endpoint-length",
        "2048",
        parse.count,
        "Characters in a backend's endpoint URL.",
    ),
    Option(
        "max_key_length",
        "FOREMAN_MAX_KEY_LENGTH",
        "--max-key-length",
        "1024",
        parse.count,
        "Characters in a backend's API key.",
    ),
    Option(
        "max_alias_length",
        "FOREMAN_MAX_ALIAS_LENGTH",
        "--max-alias-length",
        "200",
        parse.count,
        "Characters in a model alias and in the model it names.",
    ),
)
