"""The settings pages under ``/admin/`` (control plane, Quart templates).

Server-rendered HTML that works without JavaScript; ``static/admin.js`` adds live
status, the Test button's answer in place and copy buttons. Everything is served by
foreman itself (no CDN, no external fonts) under a strict Content-Security-Policy.

Pages (all but sign-in need a session, :mod:`foreman.users.sessions`):

* ``GET /admin/login``, ``POST /admin/login`` (``key``), ``POST /admin/logout``;
* ``GET /admin/``: the dashboard (backends' state, resident models, chats in flight and
  waiting, queue depth per lane, recent jobs); ``GET /admin/live`` is its live part;
* ``GET /admin/backends``: the backends with status, model dropdown, Test, edit and
  delete, "+ Add custom endpoint" and the preferences; ``GET /admin/backends/live`` is
  ``{"<id>": "<status html>"}``;
* ``GET /admin/users`` (admins): create (the key shown once), list, revoke.

Every form carries the session's CSRF token (``csrf_token``; ``X-CSRF-Token`` for
``fetch``); a POST without it gets 403. What a user may do is
:class:`~foreman.backends.manage.Manager`'s to say, as for the JSON API.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Response, redirect, render_template, request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from ...backends import registry
from ...backends.manage import Manager
from ...backends.registry import BackendRecord, FieldError
from ...dataplane.errors import ForemanError
from ...gateway import Gateway
from ...jobs import records as job_records
from ...users import SESSION_SCOPE_KEY, User, create_user, list_users, revoke_user
from ...users.sessions import COOKIE, Session, cookie_value, same_secret

__all__ = ["admin_pages", "human_age", "human_size", "page_error"]

LOGIN_COOKIE = "foreman_login"  # the sign-in form's CSRF token, before there is a session
TYPES = {"ollama": "Ollama", "anthropic": "Claude (Anthropic)", "openai": "OpenAI-compatible"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
RECENT_JOBS = 10
_LOCAL = re.compile(r"/admin/[A-Za-z0-9/._~%-]*")  # a page path: no scheme, host or controls


def human_size(size: int | None) -> str:
    """``18.5 GB``: bytes in decimal units, as Ollama's own CLI shows sizes ("" if None)."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if round(value, 1) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_age(seconds: float | None) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``; ``never`` for None."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    for limit, unit, size in ((60, "s", 1), (3600, "min", 60), (86400, "h", 3600)):
        if seconds < limit:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def _duration(job: job_records.Job, now: float) -> str:
    if job.started_at is None:
        return ""
    seconds = (job.finished_at or now) - job.started_at
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


class BadForm(Exception):
    """A form failed its CSRF check."""


def admin_pages(gw: Gateway, manager: Manager) -> Blueprint:
    """The ``/admin/`` pages of ``gw``; backends and preferences change through ``manager``."""
    assert gw.users is not None and gw.backends is not None
    users, sessions, backends = gw.users, gw.users.sessions, gw.backends
    assets = {"asset_version": ASSET_VERSION}
    pages = Blueprint(
        "admin",
        __name__,
        template_folder="templates",
        static_folder="static",
        static_url_path="/admin/static",
    )

    @pages.after_request
    async def secured(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    # --- sessions ------------------------------------------------------------------------

    def session_of() -> Session | None:
        return request.scope.get(SESSION_SCOPE_KEY)

    def fetched() -> bool:
        return request.headers.get("X-Requested-With") == "fetch"

    def same_origin() -> bool:
        """A form or call from foreman's own pages: no ``Origin`` (an older browser), or
        this very origin. The front lets other local origins through (Ollama's rules), and
        cookies do not tell ports apart: another page on localhost must not post here."""
        origin = request.headers.get("Origin")
        # the host alone: behind a proxy that ends TLS, foreman sees http, the browser https
        return origin is None or urlsplit(origin).netloc == request.host

    def cookies() -> str:
        return "; ".join(request.headers.getlist("Cookie"))

    async def login_page(next_page: str, error: str | None = None, status: int = 200) -> Any:
        """The sign-in form; its CSRF token lives in a cookie (kept while it is valid)."""
        token = cookie_value(cookies(), LOGIN_COOKIE) or secrets.token_urlsafe(32)
        html = await render_template(
            "admin/login.html", csrf=token, next=_local(next_page), error=error, **assets
        )
        response = Response(html, status=status, content_type="text/html; charset=utf-8")
        set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
        return response

    def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/admin/",
            httponly=True,
            samesite="Strict",
            secure=request.scope.get("scheme") == "https",
        )

    def signed_in(response: Response, token: str) -> Response:
        set_cookie(response, COOKIE, token)
        response.delete_cookie(LOGIN_COOKIE, path="/admin/")
        return response

    def page(
        *, admin: bool = False
    ) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
        """A page that needs a session (and, with ``admin``, an admin); its POSTs need the
        session's CSRF token. The handler gets the session first."""

        def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            @wraps(handler)
            async def checked(**kwargs: Any) -> Any:
                session = session_of()
                if request.method != "GET" and not same_origin():
                    raise BadForm
                if session is None:
                    if fetched():  # admin.js reloads, and the page then asks to sign in
                        return {"error": "signed out"}, 401
                    if users.open and request.method == "GET":  # no key needed: go on
                        opened = await sessions.sign_in("")
                        assert opened is not None
                        return signed_in(redirect(request.path, 303), opened[0])
                    if request.method != "GET":
                        return redirect("/admin/", 303)
                    return redirect(f"/admin/login?next={request.path}", 303)
                if request.method == "POST":
                    form = await request.form
                    given = form.get("csrf_token") or request.headers.get("X-CSRF-Token")
                    if not session.csrf_ok(given):
                        raise BadForm
                if admin and not session.user.is_admin:
                    return await render(session, "error.html", 403, message="Admins only.")
                return await handler(session, **kwargs)

            return checked

        return decorate

    @pages.errorhandler(ForemanError)
    async def not_here(exc: ForemanError) -> Any:
        session = session_of()
        if session is None:
            return redirect("/admin/login", 303)
        return await render(session, "error.html", exc.status_code, message=exc.message)

    @pages.errorhandler(BadForm)
    async def bad_form(_: BadForm) -> Any:
        message = "This form did not come from this session (its CSRF token is missing or old)."
        session = session_of()
        if session is None:
            form = await request.form
            return await login_page(form.get("next") or request.args.get("next", ""), message, 403)
        return await render(session, "error.html", 403, message=message + " Reload and retry.")

    async def render(session: Session, template: str, status: int = 200, **context: Any) -> Any:
        html = await render_template(
            f"admin/{template}",
            session=session,
            user=session.user,
            csrf=session.csrf,
            open_mode=users.open,
            flashes=[] if template.startswith("_") else session.take_flashes(),
            path=request.path,
            **assets,
            **context,
        )
        return html, status

    # --- sign-in ---------------------------------------------------------------------------

    @pages.get("/admin")
    async def bare() -> Any:
        return redirect("/admin/", 308)

    @pages.get("/admin/login")
    async def login_form() -> Any:
        if session_of() is not None or users.open:
            return redirect("/admin/", 303)
        return await login_page(request.args.get("next", ""))

    @pages.post("/admin/login")
    async def login() -> Any:
        form = await request.form
        expected = cookie_value(cookies(), LOGIN_COOKIE)
        if not same_origin() or not expected or not same_secret(form.get("csrf_token"), expected):
            raise BadForm
        opened = await sessions.sign_in(form.get("key", "").strip())
        if opened is None:
            error = "That key is not valid (or it was revoked)."
            return await login_page(form.get("next", ""), error, 401)
        old = session_of()
        if old is not None:
            await sessions.sign_out(old)
        return signed_in(redirect(_local(form.get("next")), 303), opened[0])

    @pages.post("/admin/logout")
    @page()
    async def logout(session: Session) -> Any:
        await sessions.sign_out(session)
        response = redirect("/admin/login", 303)
        response.delete_cookie(COOKIE, path="/admin/")
        return response

    # --- dashboard -------------------------------------------------------------------------

    async def dashboard_context(session: Session) -> dict[str, Any]:
        now = time.time()
        rows = []
        for record in manager.seen(session.user):
            running = backends.running.get(record.id)
            gate = getattr(running, "gate", None)
            residency = getattr(running, "residency", None)
            rows.append(
                {
                    "record": record,
                    "status": manager.status(record.id),
                    "selected": backends.selected.get(record.id),
                    "resident": None if residency is None else residency.resident,
                    "gate": None if gate is None else gate.statistics(),
                }
            )
        jobs = None
        if gw.jobs is not None:
            recent = await gw.jobs.store.call(
                lambda db: job_records.list_jobs(
                    db, state=None, priority=None, limit=RECENT_JOBS, before=None
                )
            )
            jobs = {
                "depths": dict(gw.jobs.depths),
                "running": gw.jobs.chat_job,
                "recent": [(job, _duration(job, now)) for job in recent],
            }
        return {"rows": rows, "jobs": jobs, "embeds": gw.embeds_in_flight, "now": now}

    @pages.get("/admin/")
    @page()
    async def dashboard(session: Session) -> Any:
        return await render(session, "dashboard.html", **await dashboard_context(session))

    @pages.get("/admin/live")
    @page()
    async def dashboard_live(session: Session) -> Any:
        return await render(session, "_dashboard.html", **await dashboard_context(session))

    # --- backends and preferences ------------------------------------------------------------

    async def card_of(user: User, record: BackendRecord) -> dict[str, Any]:
        """What a backend's card shows; ``sig`` changes when its model list does."""
        since = backends.status(record.id).last_success
        models = await backends.store.call(
            registry.list_models, record.id, float("inf") if since is None else since
        )
        selected = backends.selected.get(record.id)
        return {
            "record": record,
            "status": manager.status(record.id),
            "models": models,
            "selected": selected,
            "may_change": manager.may_change(user, record),
            "sig": "|".join([selected or "", *(m["name"] for m in models)]),
        }

    async def backends_page(
        session: Session,
        status: int = 200,
        *,
        errors: dict[str, str] | None = None,
        values: MultiDict | None = None,
        form: str | None = None,
    ) -> Any:
        user = session.user
        cards = [await card_of(user, record) for record in manager.seen(user)]
        preferences = backends.preferences_of(user.name)
        aliases = dict(preferences.aliases or {})
        return await render(
            session,
            "backends.html",
            status,
            cards=cards,
            types=TYPES,
            preferences=preferences,
            fallback_on="fallback_to_claude" in values
            if form == "preferences" and values is not None
            else preferences.fallback_to_claude is not False,
            split_on="split" in values
            if form == "preferences" and values is not None
            else _split_on(aliases, backends.visible(user.name)),
            split_was=values.get("split_was", "0")
            if form == "preferences" and values is not None
            else ("1" if _split_on(aliases, backends.visible(user.name)) else "0"),
            aliases_text="\n".join(f"{k} = {v}" for k, v in sorted(aliases.items())),
            errors=errors or {},
            values=values or MultiDict(),
            form=form,
        )

    @pages.get("/admin/backends")
    @page()
    async def backends_list(session: Session) -> Any:
        return await backends_page(session)

    @pages.get("/admin/backends/live")
    @page()
    async def backends_live(session: Session) -> Any:
        """``{"<id>": {"status": html, "models": html, "sig": str}}`` for admin.js."""
        live = {}
        for record in manager.seen(session.user):
            card = await card_of(session.user, record)
            live[str(record.id)] = {
                "status": await render_template("admin/_status.html", status=card["status"]),
                "models": await render_template(
                    "admin/_model_form.html", card=card, csrf=session.csrf, errors={}
                ),
                "sig": card["sig"],
            }
        return live

    @pages.post("/admin/backends")
    @page()
    async def backend_add(session: Session) -> Any:
        form = await request.form
        fields: dict[str, Any] = {
            "name": form.get("name", "").strip(),
            "type": form.get("type", ""),
            "endpoint": form.get("endpoint", "").strip() or None,
            "is_active": "is_active" in form,
        }
        if form.get("api_key"):
            fields["api_key"] = form["api_key"].strip()
        try:
            record = await manager.create(session.user, fields)
        except FieldError as exc:
            return await backends_page(
                session, 422, errors={exc.field: exc.problem}, values=form, form="add"
            )
        session.flash(f"Added backend {record.name!r}.")
        return redirect(f"/admin/backends#backend-{record.id}", 303)

    @pages.get("/admin/backends/<int:backend_id>/edit")
    @page()
    async def backend_edit_form(session: Session, backend_id: int) -> Any:
        record = manager.find(session.user, backend_id, change=True)
        return await render(session, "backend_edit.html", record=record, errors={}, values=None)

    @pages.post("/admin/backends/<int:backend_id>/edit")
    @page()
    async def backend_edit(session: Session, backend_id: int) -> Any:
        record = manager.find(session.user, backend_id, change=True)
        form = await request.form
        fields: dict[str, Any] = {"name": form.get("name", "").strip()}
        if not record.builtin:
            fields["endpoint"] = form.get("endpoint", "").strip() or None
            fields["is_active"] = "is_active" in form
        if form.get("api_key"):  # empty: keep the stored key
            fields["api_key"] = form["api_key"].strip()
        if form.get("clear_api_key"):
            fields["api_key"] = None
        if session.user.is_admin and record.owner is None:
            fields["is_default"] = "is_default" in form
        try:
            await manager.update(session.user, backend_id, fields)
        except FieldError as exc:
            return await render(
                session,
                "backend_edit.html",
                422,
                record=record,
                errors={exc.field: exc.problem},
                values=form,
            )
        session.flash(f"Saved backend {fields['name']!r}.")
        return redirect(f"/admin/backends#backend-{backend_id}", 303)

    @pages.post("/admin/backends/<int:backend_id>/delete")
    @page()
    async def backend_delete(session: Session, backend_id: int) -> Any:
        record = manager.find(session.user, backend_id, change=True)
        try:
            await manager.delete(session.user, backend_id)
        except FieldError as exc:
            session.flash(str(exc))
        else:
            session.flash(f"Deleted backend {record.name!r}.")
        return redirect("/admin/backends", 303)

    @pages.post("/admin/backends/<int:backend_id>/test")
    @page()
    async def backend_test(session: Session, backend_id: int) -> Any:
        record = manager.find(session.user, backend_id)
        try:
            result = await manager.test(session.user, backend_id)
        except ForemanError as exc:
            result = {"ok": False, "status": manager.status(backend_id), "models": []}
            result["error"] = exc.message
        if request.headers.get("X-Requested-With") == "fetch":  # admin.js: the answer in place
            return await render(session, "_test.html", record=record, result=result)
        session.flash(_test_summary(record, result))
        return redirect(f"/admin/backends#backend-{backend_id}", 303)

    @pages.post("/admin/backends/<int:backend_id>/model")
    @page()
    async def backend_model(session: Session, backend_id: int) -> Any:
        form = await request.form
        try:
            record = await manager.select(session.user, backend_id, form.get("model"))
        except FieldError as exc:
            return await backends_page(
                session, 422, errors={f"model-{backend_id}": exc.problem}, form="model"
            )
        session.flash(f"{record.name}: selected model {form.get('model')}.")
        return redirect(f"/admin/backends#backend-{backend_id}", 303)

    @pages.post("/admin/preferences")
    @page()
    async def preferences_save(session: Session) -> Any:
        form = await request.form
        user = session.user
        try:
            fields = _preferences_fields(form, backends.visible(user.name), backends.selected)
            await manager.put_preferences(user, fields)
        except FieldError as exc:
            return await backends_page(
                session, 422, errors={exc.field: exc.problem}, values=form, form="preferences"
            )
        session.flash("Preferences saved.")
        return redirect("/admin/backends#preferences", 303)

    # --- users -------------------------------------------------------------------------------

    async def users_page(session: Session, status: int = 200, **context: Any) -> Any:
        listed = await users.store.call(list_users)
        revealed, session.revealed = session.revealed, None
        return await render(
            session, "users.html", status, users=listed, revealed=revealed, **context
        )

    @pages.get("/admin/users")
    @page(admin=True)
    async def users_list(session: Session) -> Any:
        return await users_page(session, errors={}, values=MultiDict())

    @pages.post("/admin/users")
    @page(admin=True)
    async def user_add(session: Session) -> Any:
        form = await request.form
        first = users.open  # this user closes foreman: its maker signs in with the new key
        role = form.get("role", "user")
        if first and role != "admin":
            problem = "the first user closes foreman to everyone else: make it an admin"
            return await users_page(session, 422, errors={"role": problem}, values=form)
        try:
            made, key = await users.store.call(create_user, form.get("name", "").strip(), role)
        except ValueError as exc:
            field, _, problem = str(exc).partition(": ")
            return await users_page(session, 422, errors={field: problem}, values=form)
        await users.reload()
        response = redirect("/admin/users", 303)
        if first:
            await sessions.sign_out(session)
            token, session = await sessions.sign_in(key) or (None, session)
            assert token is not None, "a key just made signs in"
            signed_in(response, token)
            session.flash(f"foreman is closed now: you are signed in as {made['name']}.")
        session.revealed = (made["name"], key)
        return response

    @pages.post("/admin/users/<name>/revoke")
    @page(admin=True)
    async def user_revoke(session: Session, name: str) -> Any:
        revoked = await users.store.call(revoke_user, name)
        await users.reload()
        session.flash(f"Revoked {name!r}." if revoked else f"No user {name!r}.")
        return redirect("/admin/users", 303)

    @pages.app_template_filter("size")
    def size_filter(size: int | None) -> str:
        return human_size(size)

    @pages.app_template_filter("when")
    def when_filter(stamp: str | None) -> str:
        """An RFC 3339 time as ``2026-11-23 11:21 UTC``."""
        if not stamp:
            return ""
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M UTC")

    @pages.app_template_global("human_age")
    def human_age_global(seconds: float | None) -> str:
        return human_age(seconds)

    @pages.app_template_global("type_name")
    def type_name(kind: str) -> str:
        return TYPES.get(kind, kind)

    return pages


async def page_error(exc: HTTPException) -> Response:
    """An unknown page or a wrong method under ``/admin/``, as a page (not gin's text)."""
    messages = {404: "There is no such page.", 405: "That page does not take this method."}
    html = await render_template(
        "admin/error.html",
        message=messages.get(exc.code or 500, exc.description or "Error."),
        asset_version=ASSET_VERSION,
    )
    response = Response(html, status=exc.code or 500, content_type="text/html; charset=utf-8")
    response.headers.update(SECURITY_HEADERS)
    return response


def _asset_version() -> str:
    """A digest of the static files, in their URLs: a new admin.js is never a stale one."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "static").iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


ASSET_VERSION = _asset_version()


def _local(target: str | None) -> str:
    """``target`` if it is one of the settings pages, else ``/admin/`` (no open redirect)."""
    if target and _LOCAL.fullmatch(target) and "//" not in target:
        return target
    return "/admin/"


def _test_summary(record: BackendRecord, result: dict[str, Any]) -> str:
    if result["ok"]:
        count = len(result["models"])
        return f"Test of {record.name}: connected, {count} model{'s' if count != 1 else ''}."
    return f"Test of {record.name}: {result['status']['state']}: {result['error']}"


def _split_on(aliases: dict[str, str], visible: dict[str, Any]) -> bool:
    """Whether ``code`` goes to an Ollama backend and ``research`` to Claude."""

    def kind(alias: str) -> str | None:
        backend = visible.get(aliases.get(alias, "").partition("/")[0])
        return None if backend is None else backend.type

    return kind("code") == "ollama" and kind("research") == "anthropic"


def _preferences_fields(
    form: MultiDict, visible: dict[str, Any], selected: dict[int, str | None]
) -> dict[str, Any]:
    """The preferences form as ``PUT /admin/api/preferences`` takes it.

    The aliases come from the advanced editor (``alias = backend/model`` lines); the
    simple choice "Ollama for code, Claude for research" then sets or removes ``code``
    and ``research`` when it was switched (what changed wins).

    Raises:
        FieldError: a line of the editor that is no ``alias = target``, or the simple
            choice without an Ollama and a Claude backend that have a selected model.
    """
    default = form.get("default_backend_id", "")
    if default and not (default.isascii() and default.isdigit()):
        raise FieldError("default_backend_id", "choose one of the backends")
    aliases: dict[str, str] = {}
    for number, line in enumerate(form.get("aliases", "").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        alias, equals, target = line.partition("=")
        if not equals or not alias.strip() or not target.strip():
            raise FieldError("aliases", f"line {number}: write it as alias = backend/model")
        aliases[alias.strip()] = target.strip()
    split, was = "split" in form, form.get("split_was") == "1"
    if split and not was:
        for alias, kind in (("code", "ollama"), ("research", "anthropic")):
            aliases[alias] = _pick(visible, selected, kind, default)
    elif was and not split:
        aliases.pop("code", None)
        aliases.pop("research", None)
    return {
        "default_backend_id": int(default) if default.isascii() and default.isdigit() else None,
        "fallback_to_claude": "fallback_to_claude" in form,
        "aliases": aliases,
    }


def _pick(visible: dict[str, Any], selected: dict[int, str | None], kind: str, default: str) -> str:
    """The backend of ``kind`` for the simple choice: the chosen default if it is one,
    else the user's own, else a shared one; it must have a selected model."""
    candidates = [b for b in visible.values() if b.type == kind and selected.get(b.record.id)]
    candidates.sort(
        key=lambda b: (str(b.record.id) != default, b.record.owner is None, b.record.id)
    )
    if not candidates:
        what = "an Ollama" if kind == "ollama" else "a Claude"
        raise FieldError("split", f"needs {what} backend with a selected model")
    return candidates[0].name
