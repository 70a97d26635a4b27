"""Browser sessions of the settings pages: a key signs in once, a cookie carries on.

Signing in with an API key (a user's, or ``FOREMAN_TOKEN``) makes a session: a random
256-bit token in the cookie ``foreman_session`` (``HttpOnly``, ``SameSite=Strict``,
``Path=/admin/``, ``Secure`` when served over TLS) and, server-side, the user, the
SHA-256 of the key used and a CSRF token. With SQLite sessions live in memory only: a
restart signs everyone out, and nothing about them is ever written to disk. With several
replicas on one PostgreSQL (``FOREMAN_DATABASE_URL``) each session is also a row of
``sessions`` (token and key as SHA-256, the CSRF token, its start), so that a sign-in on
one replica opens pages on every other; a sign-out deletes the row and the others drop
their copy when the database announces it (``foreman/replicas.py``). Flashes and a new
user's key shown once stay on the replica that made them.

Every lookup authenticates the session's key again (:meth:`Users.authenticate_hash`):
revoking a user ends their sessions at once. A session ends after :data:`IDLE`
seconds without a request, after :data:`LIFETIME` seconds in all, or at sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import User, Users

__all__ = ["COOKIE", "IDLE", "LIFETIME", "Session", "Sessions", "cookie_value", "same_secret"]

COOKIE = "foreman_session"
#: Seconds a session lasts without a request.
IDLE = 8 * 3600.0
#: Seconds a session lasts at most.
LIFETIME = 7 * 24 * 3600.0
#: Sessions kept at most (the oldest go first): signing in cannot exhaust memory.
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """One signed-in browser. Times are Unix seconds."""

    user: User
    key_hash: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.time)
    flashes: list[str] = field(default_factory=list)
    revealed: tuple[str, str] | None = None  # a new user's (name, key), shown once
    token_hash: str = ""  # the cookie's token, hashed (set by Sessions)

    def csrf_ok(self, given: str | bytes | None) -> bool:
        """Whether ``given`` is this session's CSRF token (compared in constant time)."""
        return same_secret(given, self.csrf)

    def flash(self, message: str) -> None:
        """Say ``message`` on the next page this session sees."""
        self.flashes.append(message)

    def take_flashes(self) -> list[str]:
        flashes, self.flashes = self.flashes, []
        return flashes


def same_secret(given: str | bytes | None, secret: str) -> bool:
    """Whether ``given`` is ``secret``, compared in constant time (any bytes welcome)."""
    if not given:
        return False
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, secret.encode())


def cookie_value(header: bytes | str | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (several headers joined with
    ``; ``), or None. Lenient, as browsers are: a malformed neighbour (a space, JSON, a
    stray quote in another site's cookie) does not hide foreman's."""
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    for pair in header.split(";"):
        key, equals, value = pair.partition("=")
        if equals and key.strip() == name:
            return value.strip().strip('"') or None
    return None


class Sessions:
    """The signed-in browsers of one foreman, by token (kept hashed)."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self._by_token: dict[str, Session] = {}

    async def sign_in(self, key: str) -> tuple[str, Session] | None:
        """A new session for API ``key``: (its token for the cookie, the session); None
        when ``key`` is no active key. While foreman is open (no key needed), any key,
        the empty one too, signs in as ``anonymous``. Shared: stored before it returns."""
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        user = self.users.authenticate_hash(key_hash)
        if user is None:
            return None
        token, session = self._open(Session(user, key_hash))
        if self.users.shared:
            await self.users.store.call(_save, session, time.time() - LIFETIME)
        return token, session

    def _open(self, session: Session) -> tuple[str, Session]:
        while len(self._by_token) >= MAX_SESSIONS:
            del self._by_token[next(iter(self._by_token))]
        token = secrets.token_urlsafe(32)
        session.token_hash = _hash(token)
        self._by_token[session.token_hash] = session
        return token, session

    def lookup(self, token: str | None) -> Session | None:
        """The live session of a cookie's ``token``, its user checked again; None if
        there is none (unknown, expired, or its key revoked)."""
        if not token:
            return None
        token_hash = _hash(token)
        session = self._by_token.get(token_hash)
        if session is None:
            return None
        now = time.time()
        user = self.users.authenticate_hash(session.key_hash)
        if user is None or now - session.seen > IDLE or now - session.created > LIFETIME:
            del self._by_token[token_hash]
            return None
        session.user, session.seen = user, now
        return session

    async def find(self, token: str | None) -> Session | None:
        """:meth:`lookup`, and on a shared database a session another replica opened."""
        session = self.lookup(token)
        if session is not None or not token or not self.users.shared:
            return session
        row = await self.users.store.call(_load, _hash(token))
        user = None if row is None else self.users.authenticate_hash(row["key_hash"])
        if row is None or user is None:
            return None
        self._by_token[row["token_hash"]] = Session(
            user, row["key_hash"], row["csrf"], row["created_at"], token_hash=row["token_hash"]
        )  # seen now: each replica keeps its own idle clock
        return self.lookup(token)

    async def sign_out(self, session: Session) -> None:
        self.drop(session.token_hash)
        if self.users.shared:
            await self.users.store.call(_delete, session.token_hash)

    def drop(self, token_hash: str) -> None:
        """Forget a session here (signed out, on this replica or another)."""
        self._by_token.pop(token_hash, None)

    def __len__(self) -> int:
        return len(self._by_token)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- the shared rows (store functions, run in the store's threads) -----------------------


def _save(db: Any, session: Session, expired: float) -> None:
    db.execute("DELETE FROM sessions WHERE created_at < ?", (expired,))
    db.execute(
        "INSERT INTO sessions (token_hash, key_hash, csrf, created_at) VALUES (?, ?, ?, ?)",
        (session.token_hash, session.key_hash, session.csrf, session.created),
    )


def _load(db: Any, token_hash: str) -> Any:
    return db.execute("SELECT * FROM sessions WHERE token_hash = ?", (token_hash,)).fetchone()


def _delete(db: Any, token_hash: str) -> None:
    db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
