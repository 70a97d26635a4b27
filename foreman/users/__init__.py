"""Users: API keys with a role, kept in the store; the bearer key of a request selects one.

A key is ``fm_`` and 43 URL-safe characters (256 random bits), shown once when the
user is created. Only its SHA-256 is stored: a key this random needs no slow hash,
and a stolen database yields no key. ``FOREMAN_TOKEN`` stays the admin key of v1.
With neither a ``FOREMAN_TOKEN`` nor any user, foreman stays open, as v1 was; once a
user has been made, revoking every one does not open it again.

The request path never touches the store: :class:`Users` keeps the active keys in
memory and reloads them every :data:`REFRESH` seconds (so a key revoked by ``foreman
users`` from another process is refused within that time), and at once after a change
made through ``/admin/api/users``. A key it does not know (``fm_...``) makes it read
the store once more before the answer is 401 (:meth:`Users.authenticate_fresh`): a key
just made by ``foreman users add``, or on another replica, works at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import secrets
import sqlite3
import time
from typing import Any

import trio

from ..dataplane.jsonwire import rfc3339
from ..store import Store, StoreUnavailable
from .identity import ANONYMOUS, TOKEN_ADMIN, User
from .sessions import Sessions

__all__ = [
    "REFRESH",
    "SESSION_SCOPE_KEY",
    "USER_SCOPE_KEY",
    "User",
    "Users",
    "create_user",
    "list_users",
    "revoke_user",
]

LOGGER = logging.getLogger("foreman.users")

#: The ASGI scope key under which foreman's front puts the request's :class:`User`.
USER_SCOPE_KEY = "foreman.user"
#: The ASGI scope key of a settings page's :class:`~.sessions.Session` (or None).
SESSION_SCOPE_KEY = "foreman.session"
#: Seconds between reloads of the users table.
REFRESH = 5.0
#: Seconds at least between two reads of the store for unknown keys: a flood of wrong
#: ``fm_`` keys costs one read per this interval, however many requests carry them.
MISS_REFRESH = 0.1
KEY_PREFIX = "fm_"
ROLES = ("admin", "user")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


#: Names no user may take, in any case: the token holder's and the open foreman's.
RESERVED = frozenset({TOKEN_ADMIN.name, ANONYMOUS.name})


def _hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


# --- store functions (run in the store's thread: ``await store.call(fn, ...)``) ----------


def create_user(db: sqlite3.Connection, name: str, role: str) -> tuple[dict[str, Any], str]:
    """Add a user; returns (the user as :func:`list_users` shows it, its new key).

    Names are unique whatever their case (``BOB`` is ``bob``); ``admin`` (the holder of
    ``FOREMAN_TOKEN``) and ``anonymous`` are reserved.

    Raises:
        ValueError: a bad or reserved name or role, or the name is taken (the message
            says which).
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError("name: 1 to 64 of A-Z a-z 0-9 . _ @ -, not starting with . _ @ -")
    if role not in ROLES:
        raise ValueError(f"role: one of {', '.join(ROLES)}")
    if name.lower() in RESERVED:
        raise ValueError(f"name: {name!r} is reserved")
    if db.execute("SELECT 1 FROM users WHERE lower(name) = lower(?)", (name,)).fetchone():
        raise ValueError(f"name: a user {name!r} exists already")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        db.execute(
            "INSERT INTO users (name, role, key_hash, key_prefix, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, role, _hash(key.encode()), key[:7], time.time()),
        )
    except sqlite3.IntegrityError:
        raise ValueError(f"name: a user {name!r} exists already") from None
    return _shown(db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()), key


def list_users(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every user, oldest first: ``{"name", "role", "key_prefix", "created_at", "revoked_at"}``
    (times RFC 3339 UTC; never the key or its hash)."""
    return [_shown(row) for row in db.execute("SELECT * FROM users ORDER BY id")]


def revoke_user(db: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    """Revoke a user's key (the row stays, for the record); None if there is no such user."""
    db.execute(
        "UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
        (time.time(), name),
    )
    row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else _shown(row)


def _active(db: sqlite3.Connection) -> tuple[dict[str, User], bool]:
    """The active users by key hash, and whether any user was ever made."""
    rows = db.execute("SELECT name, role, key_hash FROM users WHERE revoked_at IS NULL")
    active = {key_hash: User(name, role) for name, role, key_hash in rows}
    return active, bool(active) or db.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()[0]


def _shown(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "name": row["name"],
        "role": row["role"],
        "key_prefix": row["key_prefix"] + "…",
        "created_at": rfc3339(row["created_at"]),
        "revoked_at": rfc3339(row["revoked_at"]),
    }


# --- the request path ---------------------------------------------------------------------


class Users:
    """The active users' keys, in memory.

    Args:
        store: the open store.
        token: ``FOREMAN_TOKEN`` (the admin key), or None.
    """

    def __init__(self, store: Store, token: str | None) -> None:
        self.store = store
        self._token = token.encode() if token else None
        self._token_hash = _hash(self._token) if self._token else None
        self._by_hash: dict[str, User] = {}
        self._any = False  # a user was ever made (revoking the last one does not reopen)
        self._read_at = -math.inf  # trio time at which the last read of the store began
        self._reads = 0  # reads of the store begun
        self._seen = 0  # the number (1, 2, ...) of the latest read begun that has ended
        self._miss_lock = trio.Lock()
        self.sessions = Sessions(self)

    @property
    def open(self) -> bool:
        """True while no key is needed: no ``FOREMAN_TOKEN`` and no user ever made."""
        return self._token is None and not self._any

    def authenticate(self, authorization: bytes | None) -> User | None:
        """The user an ``Authorization`` header value names, or None.

        ``Bearer <FOREMAN_TOKEN>`` is :data:`TOKEN_ADMIN`; ``Bearer <key>`` of an active
        user is that user; while :attr:`open`, anyone is :data:`ANONYMOUS`.
        """
        if self.open:
            return ANONYMOUS
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        given = given.strip()
        if self._token is not None and hmac.compare_digest(given, self._token):
            return TOKEN_ADMIN
        return self._by_hash.get(_hash(given))

    def authenticate_hash(self, key_hash: str) -> User | None:
        """The user whose key has SHA-256 ``key_hash`` (hex), as :meth:`authenticate`
        decides for the key itself; a browser session keeps only this hash."""
        if self.open:
            return ANONYMOUS
        if self._token_hash is not None and hmac.compare_digest(key_hash, self._token_hash):
            return TOKEN_ADMIN
        return self._by_hash.get(key_hash)

    @property
    def shared(self) -> bool:
        """Whether other replicas make users too (a shared database)."""
        return bool(getattr(self.store, "shared", False))

    async def reload(self) -> None:
        """Read the active users again (after a change made through the API)."""
        self._reads += 1
        number, self._read_at = self._reads, trio.current_time()
        self._by_hash, self._any = await self.store.call(_active)
        self._seen = max(self._seen, number)

    async def refreshed_for(self, key: str | bytes | None) -> bool:
        """After ``key`` was not known: read the users again, if ``key`` looks like one of
        foreman's (``fm_...``) and no read began since this call; True if it read.

        Misses at the same time share one read, and reads for misses are at least
        :data:`MISS_REFRESH` seconds apart (a miss waits for the next one, so a key
        made a moment ago still works on its first request).
        """
        if isinstance(key, str):
            key = key.encode("utf-8", "surrogateescape")
        if not key or not key.startswith(KEY_PREFIX.encode()):
            return False
        asked = self._reads
        async with self._miss_lock:
            if self._seen > asked:  # a read begun after the miss has ended: it saw the store
                return True
            await trio.sleep_until(self._read_at + MISS_REFRESH)
            await self.reload()
        return True

    async def authenticate_fresh(self, authorization: bytes | None) -> User | None:
        """:meth:`authenticate`, reading the store once more for an unknown ``fm_`` key
        (:meth:`refreshed_for`) before the answer is None: a key just made by ``foreman
        users add``, or on another replica of a shared database, works at once.

        Raises:
            sqlite3.Error, StoreUnavailable: the store could not be read.
        """
        user = self.authenticate(authorization)
        if user is not None:
            return user
        scheme, _, given = (authorization or b"").partition(b" ")
        if scheme.lower() == b"bearer" and await self.refreshed_for(given.strip()):
            return self.authenticate(authorization)
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the users, then reload them every :data:`REFRESH` seconds; never returns."""
        await self.reload()
        task_status.started()
        while True:
            await trio.sleep(REFRESH)
            try:
                await self.reload()
            except (sqlite3.Error, StoreUnavailable) as exc:  # keep the keys we have; later
                LOGGER.warning("users: cannot reload: %s", exc)
