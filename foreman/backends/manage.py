"""Managing backends and preferences on a user's behalf: who may see and change what.

One layer under both faces of it, the JSON API (:mod:`.routes`, ``/admin/api/...``)
and the settings pages (:mod:`foreman.control.admin`), so that both check the same rules:

* an admin sees and changes every backend; a user sees the shared ones and their own,
  and changes only their own (another user's backend does not exist for them: 404);
* only an admin sets a backend's ``owner`` or the shared default (``is_default``).

Errors: :class:`~.registry.FieldError` (a wrong field: 422), :class:`NotFound` (404),
:class:`Forbidden` (403), :class:`Inactive` (409); the last three are
:class:`~foreman.dataplane.errors.ForemanError`\\ s, answered as ``{"error": "..."}``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..dataplane.errors import ForemanError, TargetError
from ..dataplane.jsonwire import rfc3339
from ..outbound import short_reason
from ..users import User
from . import Backends, choices, registry
from .registry import BackendRecord, FieldError, Limits

__all__ = ["PAGE_ROWS", "CheckFailed", "Forbidden", "Inactive", "Manager", "NotFound"]

#: Backends the settings pages show at most (every user's, for an admin).
PAGE_ROWS = 200


class NotFound(ForemanError):
    status_code = 404


class Forbidden(ForemanError):
    status_code = 403


class Inactive(ForemanError):
    status_code = 409


class CheckFailed(ForemanError):
    """A discovery asked for failed: 502 with a short, fixed reason."""

    status_code = 502


class Manager:
    """What a user may do with ``backends``; every method takes the acting user first."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.store, self.sealer = backends.store, backends.sealer
        self.limits = Limits.of(backends.settings)

    # --- reading ---------------------------------------------------------------------------

    def status(self, backend_id: int) -> dict[str, Any]:
        """``{"state", "healthy", "last_ping" (RFC 3339), "last_ping_age_seconds",
        "last_error", "model_count"}``; ``state`` is ``connecting | connected |
        unreachable | unauthorized | inactive``."""
        state = self.backends.status(backend_id)
        backend = self.backends.running.get(backend_id)
        return {
            "state": state.state,
            "healthy": backend is not None and backend.healthy(),
            "last_ping": rfc3339(state.last_ping),
            "last_ping_age_seconds": None
            if state.last_ping is None
            else round(time.time() - state.last_ping, 3),
            "last_error": state.last_error,
            "model_count": state.model_count,
        }

    def shown(self, record: BackendRecord) -> dict[str, Any]:
        """A backend as the API shows it: :meth:`~.registry.BackendRecord.shown` (the key
        masked), ``"selected_model"`` and ``"status"`` (:meth:`status`)."""
        return {
            **record.shown(),
            "selected_model": self.backends.selected.get(record.id),
            "status": self.status(record.id),
        }

    def seen(self, user: User) -> list[BackendRecord]:
        """The backends ``user`` may see, oldest first."""
        return [
            r
            for r in self.backends.records.values()
            if user.is_admin or r.owner is None or r.owner == user.name
        ]

    def on_pages(self, user: User) -> list[BackendRecord]:
        """The backends the settings pages and their live fragments show ``user``: those
        of :meth:`seen`, the shared ones and the user's own first, :data:`PAGE_ROWS` at
        most (the fragments are fetched every few seconds)."""
        seen = self.seen(user)
        seen.sort(key=lambda r: r.owner not in (None, user.name))  # stable: oldest first
        return seen[:PAGE_ROWS]

    def may_change(self, user: User, record: BackendRecord) -> bool:
        return user.is_admin or record.owner == user.name

    def find(self, user: User, backend_id: int, *, change: bool = False) -> BackendRecord:
        """The backend ``user`` may see (and, with ``change``, change).

        Raises:
            NotFound: no such backend, or one ``user`` may not see.
            Forbidden: ``change`` and it is a shared backend and ``user`` no admin.
        """
        record = self.backends.records.get(backend_id)
        if record is None or record not in self.seen(user):
            raise NotFound(f"backend {backend_id} not found")
        if change and not self.may_change(user, record):
            raise Forbidden("only an admin changes a shared backend")
        return record

    async def models(self, user: User, backend_id: int, *, refresh: bool) -> list[dict[str, Any]]:
        """The backend's models by name (:func:`~.choices.list_models`); with
        ``refresh``, discovered again first. ``available`` is false for every model
        while the backend is not connected.

        Raises:
            CheckFailed: ``refresh`` and the backend could not be reached (502, a short reason).
        """
        record = self.find(user, backend_id)
        backend = self.backends.running.get(backend_id)
        if refresh and backend is not None:
            try:
                await backend.check(self.backends.record)
            except TargetError as exc:
                raise CheckFailed(f"backend {record.name!r}: {short_reason(exc)}") from exc
        return await self.store.call(choices.list_models, backend_id, self._seen_since(backend_id))

    def _seen_since(self, backend_id: int) -> float:
        """Since when a model must have been seen to be ``available``: the last successful
        discovery while the backend is connected; never while it is not (a dead backend's
        models are not available, though they are still listed)."""
        state = self.backends.status(backend_id)
        if state.state != "connected" or state.last_success is None:
            return math.inf
        return state.last_success

    def preferences(self, user: User) -> dict[str, Any]:
        """``{"default_backend_id", "fallback_to_claude", "aliases"}`` of ``user``."""
        return self.backends.preferences_of(user.name).shown()

    # --- changing --------------------------------------------------------------------------

    async def create(self, user: User, fields: Any) -> BackendRecord:
        """Add a backend (``{"name", "type", "endpoint", "api_key", "is_default",
        "is_active", "owner"}``) and start it. A user's backend is their own; an admin's
        is shared unless ``owner`` names a user.

        Raises:
            FieldError: a wrong field, or one only an admin may set.
        """
        checked = registry.validate(fields, creating=True, limits=self.limits)
        owner = checked.pop("owner", None) if user.is_admin else user.name
        if "owner" in checked:
            raise FieldError("owner", "only an admin sets a backend's owner")
        owned = sum(1 for r in self.backends.records.values() if r.owner == owner)
        if owner is not None and owned >= self.limits.backends:
            raise FieldError("backends", f"at most {self.limits.backends} backends per user")
        if checked.get("is_default") and not user.is_admin:
            raise FieldError("is_default", "only an admin sets the shared default")
        record = await self.store.call(registry.insert_backend, self.sealer, checked, owner)
        await self.backends.changed(record.id)
        if record.is_default:  # the others lost the flag
            for other in list(self.backends.records):
                if other != record.id:
                    await self.backends.changed(other)
        return self.backends.records[record.id]

    async def update(self, user: User, backend_id: int, fields: Any) -> BackendRecord:
        """Change some of a backend's fields (those of :meth:`create`); restarts it
        when what it connects with changed.

        Raises:
            NotFound, Forbidden: see :meth:`find`.
            FieldError: a wrong field, or one only an admin may set.
        """
        self.find(user, backend_id, change=True)
        checked = registry.validate(fields, creating=False, limits=self.limits)
        if not user.is_admin and ("owner" in checked or "is_default" in checked):
            field = "owner" if "owner" in checked else "is_default"
            raise FieldError(field, "only an admin changes it")
        record = await self.store.call(registry.update_backend, self.sealer, backend_id, checked)
        assert record is not None
        for changed in list(self.backends.records) if "is_default" in checked else [backend_id]:
            await self.backends.changed(changed)
        return self.backends.records[backend_id]

    async def delete(self, user: User, backend_id: int) -> None:
        """Delete a backend and cancel its tasks.

        Raises:
            NotFound, Forbidden: see :meth:`find`.
            FieldError: it is the builtin backend.
        """
        self.find(user, backend_id, change=True)
        await self.store.call(registry.delete_backend, backend_id)
        await self.backends.changed(backend_id)

    async def test(self, user: User, backend_id: int) -> dict[str, Any]:
        """Check the backend now: ``{"ok": bool, "status": {...}, "models": [name, ...],
        "error": str | None}`` (a failure is an answer, not an exception).

        Raises:
            NotFound: see :meth:`find`.
            Inactive: the backend is not running (switched off, or it could not start).
        """
        record = self.find(user, backend_id)
        backend = self.backends.running.get(backend_id)
        if backend is None:
            raise Inactive(f"backend {record.name!r} is not active")
        try:
            models = await backend.check(self.backends.record)
        except TargetError as exc:  # a short, fixed reason: never what the backend answered
            error = short_reason(exc)
            return {"ok": False, "status": self.status(backend_id), "models": [], "error": error}
        names = sorted(name for name, _ in models)
        return {"ok": True, "status": self.status(backend_id), "models": names, "error": None}

    async def select(self, user: User, backend_id: int, model: Any) -> BackendRecord:
        """Make ``model`` the backend's selected model (one it has discovered).

        Raises:
            NotFound, Forbidden: see :meth:`find`.
            FieldError: ``model`` is missing, or not one of the backend's models.
        """
        record = self.find(user, backend_id, change=True)
        if model is None or model == "":
            raise FieldError("model", "required: the name of one of the backend's models")
        if not isinstance(model, str) or not await self.store.call(
            choices.select_model, backend_id, model
        ):
            raise FieldError("model", f"not a model of backend {record.name!r}")
        self.backends.selected[backend_id] = model
        return record

    async def put_preferences(self, user: User, fields: Any) -> dict[str, Any]:
        """Replace ``user``'s preferences (an absent field is reset); returns them as
        :meth:`preferences` shows them.

        Raises:
            FieldError: a wrong field (``default_backend_id`` must be a backend the user
                may route to).
        """
        visible = {b.record.id for b in self.backends.visible(user.name).values()}
        chosen = choices.check_preferences(fields, visible, self.limits)
        await self.store.call(choices.put_preferences, user.name, chosen)
        self.backends.preferences[user.name] = chosen
        return chosen.shown()
