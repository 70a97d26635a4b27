"""API keys sealed at rest: the secret that seals them, its checks and its rotation.

The secret is ``FOREMAN_SECRET_KEY`` (any string; a Fernet key is derived from its
SHA-256) or, when that is unset, ``DATA_DIR/secret.key``: one Fernet key a line
(made with mode 0600 on the first key sealed). The first line seals; every line opens
(``MultiFernet``), so that :func:`rotate` never has a moment when some stored key
opens with neither file.

A missing or different secret is never replaced silently: :func:`check_sealed` at
start refuses (one line naming the file) while stored keys do not open, unless
``FOREMAN_ALLOW_UNREADABLE_KEYS=1`` (then those backends run without their keys and
the log says so). ``cryptography`` is imported only when a key is sealed or opened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import sqlite3
from typing import Any

__all__ = ["Sealer", "SecretKeyError", "check_sealed", "rotate"]

LOGGER = logging.getLogger("foreman.backends")


class SecretKeyError(Exception):
    """The secret that seals API keys is missing, unreadable or not the one that sealed
    them: one line naming the file and what to do."""


class Sealer:
    """Encrypts API keys at rest with Fernet (AES-128-CBC + HMAC-SHA256).

    Args:
        secret: ``FOREMAN_SECRET_KEY``, or None for the key file.
        data_path: the data directory, where ``secret.key`` lives.
    """

    def __init__(self, secret: str | None, data_path: str) -> None:
        self._secret = secret
        self.key_path = os.path.join(data_path, "secret.key")
        self._fernet: Any = None

    @property
    def source(self) -> str:
        """Where the secret comes from, for messages: the file's path or the setting."""
        return "FOREMAN_SECRET_KEY" if self._secret else self.key_path

    def keys(self) -> list[bytes] | None:
        """The Fernet keys, sealing one first; None when the key file does not exist.

        Raises:
            SecretKeyError: the file cannot be read or holds something else than keys.
        """
        if self._secret:
            return [base64.urlsafe_b64encode(hashlib.sha256(self._secret.encode()).digest())]
        try:
            with open(self.key_path, "rb") as file:
                lines = file.read().split()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretKeyError(f"cannot read {self.key_path}: {exc.strerror}") from None
        for number, line in enumerate(lines, 1):
            try:
                valid = len(base64.urlsafe_b64decode(line)) == 32
            except (binascii.Error, ValueError):
                valid = False
            if not valid:
                raise SecretKeyError(
                    f"{self.key_path}: line {number} is not a key foreman wrote; restore the"
                    " file from a backup (or set FOREMAN_SECRET_KEY to the secret that"
                    " sealed the stored API keys)"
                )
        if not lines:
            raise SecretKeyError(f"{self.key_path} is empty; restore it from a backup")
        return lines

    def _cipher(self, *, create: bool) -> Any:
        if self._fernet is None:
            from cryptography.fernet import Fernet, MultiFernet

            keys = self.keys()
            if keys is None:
                if not create:
                    return None  # nothing sealed with a file that is not there opens
                keys = [_write_new_key_file(self.key_path, [Fernet.generate_key()])]
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        return self._fernet

    def seal(self, api_key: str | None) -> bytes | None:
        return None if not api_key else self._cipher(create=True).encrypt(api_key.encode())

    def open(self, sealed: bytes | None) -> str | None:
        """The API key, or None when there is none or it cannot be decrypted."""
        if sealed is None:
            return None
        from cryptography.fernet import InvalidToken

        cipher = self._cipher(create=False)
        if cipher is None:
            return None
        try:
            return cipher.decrypt(sealed).decode()
        except InvalidToken:
            return None


def _write_new_key_file(path: str, keys: list[bytes]) -> bytes:
    """Write ``keys`` (one a line) to ``path`` atomically, mode 0600; returns the first."""
    temporary = f"{path}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(b"".join(key + b"\n" for key in keys))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return keys[0]


def check_sealed(db: sqlite3.Connection, sealer: Sealer, *, allow_unreadable: bool) -> None:
    """At start: every stored API key opens with ``sealer``'s secret.

    Raises:
        SecretKeyError: the key file is unreadable, or some stored key does not open
            (the file is missing or another one) and ``allow_unreadable`` is False.
    """
    sealer.keys()  # a garbage file is one line now, not a traceback later
    rows = db.execute("SELECT name, api_key FROM backends WHERE api_key IS NOT NULL").fetchall()
    unreadable = [row[0] for row in rows if sealer.open(row[1]) is None]
    if not unreadable:
        return
    why = "is missing" if sealer.keys() is None else "is not the secret that sealed them"
    names = ", ".join(unreadable)
    if not allow_unreadable:
        raise SecretKeyError(
            f"{sealer.source} {why}: the API keys of {len(unreadable)} backend(s) ({names})"
            " cannot be opened; restore it from a backup, or start with"
            " FOREMAN_ALLOW_UNREADABLE_KEYS=1 to run those backends without their keys"
        )
    LOGGER.error(
        "%s %s: backend(s) %s run WITHOUT their API keys (key unreadable) until the keys are"
        " entered again (FOREMAN_ALLOW_UNREADABLE_KEYS=1)",
        sealer.source,
        why,
        names,
    )


def rotate(db: sqlite3.Connection, sealer: Sealer, new_secret: str | None = None) -> int:
    """Re-seal every stored API key under a new secret; returns how many.

    With the key file: a new key is generated and written first beside the old one
    (both open), then every key is re-sealed in this transaction, then the caller
    calls :func:`finish_rotation` to drop the old key. With ``new_secret`` (for
    ``FOREMAN_SECRET_KEY`` users) the keys are re-sealed under it and no file is touched.

    Raises:
        SecretKeyError: some stored key does not open with the current secret.
    """
    rows = db.execute("SELECT id, name, api_key FROM backends WHERE api_key IS NOT NULL")
    opened = [(row[0], row[1], sealer.open(row[2])) for row in rows.fetchall()]
    unreadable = [name for _, name, key in opened if key is None]
    if unreadable:
        raise SecretKeyError(
            f"the API keys of {', '.join(unreadable)} do not open with {sealer.source}:"
            " nothing was rotated"
        )
    from cryptography.fernet import Fernet

    if new_secret is not None:
        fresh = Sealer(new_secret, "")
    else:
        old = sealer.keys() or []
        _write_new_key_file(sealer.key_path, [Fernet.generate_key(), *old])
        fresh = Sealer(None, os.path.dirname(sealer.key_path))
    for backend_id, _, key in opened:
        db.execute("UPDATE backends SET api_key = ? WHERE id = ?", (fresh.seal(key), backend_id))
    return len(opened)


def finish_rotation(sealer: Sealer) -> None:
    """After :func:`rotate`'s transaction committed: only the new key stays in the file."""
    keys = sealer.keys()
    if keys and len(keys) > 1:
        _write_new_key_file(sealer.key_path, keys[:1])
