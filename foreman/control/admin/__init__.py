"""The settings pages under ``/admin/`` (control plane, Quart templates).

Server-rendered HTML that works without JavaScript; ``static/admin.js`` adds live
status, the Test button's answer in place and copy buttons. Everything is served by
foreman itself (no CDN, no external fonts) under a strict Content-Security-Policy.

Pages (all but sign-in need a session, :mod:`foreman.users.sessions`):

* ``GET /admin/login``, ``POST /admin/login`` (``key``), ``POST /admin/logout``
  (:mod:`.signin`);
* ``GET /admin/``: the dashboard (backends' state, resident models, chats in flight and
  waiting, queue depth per lane, recent jobs); ``GET /admin/live`` is its live part
  (:mod:`.dashboard`);
* ``GET /admin/backends``: the backends with status, model dropdown, Test, edit and
  delete, "+ Add custom endpoint" and the preferences; ``GET /admin/backends/live`` is
  ``{"<id>": "<status html>"}`` (:mod:`.backend_pages`, :mod:`.preferences`);
* ``GET /admin/users`` (admins): create (the key shown once), list, revoke
  (:mod:`.user_pages`).

The routes live at module level on one blueprint (:data:`pages`); :func:`install`
registers it on a control app together with the gateway and the
:class:`~foreman.backends.manage.Manager` it works with (``app.extensions``). Every
form carries the session's CSRF token (``csrf_token``; ``X-CSRF-Token`` for
``fetch``); a POST without it gets 403. What a user may do is the Manager's to say, as
for the JSON API.
"""

from __future__ import annotations

from . import backend_pages, dashboard, signin, user_pages  # noqa: F401  (they add routes)
from ._common import (
    ASSET_VERSION,
    human_age,
    human_size,
    install,
    local,
    page_error,
    page_message,
    pages,
)

__all__ = [
    "ASSET_VERSION",
    "human_age",
    "human_size",
    "install",
    "local",
    "page_error",
    "page_message",
    "pages",
]
