"""Who a request is: :class:`User` (its own module, so that sessions and users share it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANONYMOUS", "TOKEN_ADMIN", "User"]


@dataclass(frozen=True)
class User:
    """Who a request is: a user of the store, or ``admin`` for ``FOREMAN_TOKEN``."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


#: The holder of ``FOREMAN_TOKEN``.
TOKEN_ADMIN = User("admin", "admin")
#: Everyone, while foreman is open (no token, no users).
ANONYMOUS = User("anonymous", "admin")
