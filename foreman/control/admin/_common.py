"""What every settings page shares: the blueprint, sessions, CSRF, rendering, filters.

The blueprint :data:`pages` is defined once, at module level; the route modules
(:mod:`.signin`, :mod:`.dashboard`, :mod:`.backend_pages`, :mod:`.user_pages`) add their
routes to it when imported. The gateway and the backends' :class:`Manager` are the
app's: :func:`install` puts them in ``app.extensions`` and :func:`services` finds them
for the request being served.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from quart import Blueprint, Quart, Response, current_app, redirect, render_template, request
from werkzeug.exceptions import HTTPException

from ...backends.manage import Manager
from ...dataplane.errors import ForemanError
from ...gateway import Gateway
from ...users import SESSION_SCOPE_KEY, Users
from ...users.sessions import COOKIE, Session, cookie_value

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
_LOCAL = re.compile(r"/admin/[A-Za-z0-9/._~%-]*")  # a page path: no scheme, host or controls
_EXTENSION = "foreman.admin"

pages = Blueprint(
    "admin",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/admin/static",
)

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Services:
    """What the pages work with: the gateway, its users and backends, and the rules."""

    gw: Gateway
    manager: Manager

    @property
    def users(self) -> Users:
        assert self.gw.users is not None
        return self.gw.users

    @property
    def backends(self) -> Any:
        assert self.gw.backends is not None
        return self.gw.backends


def install(app: Quart, gw: Gateway, manager: Manager) -> None:
    """Serve the settings pages of ``gw`` on ``app``; backends change through ``manager``."""
    assert gw.users is not None and gw.backends is not None
    app.extensions[_EXTENSION] = Services(gw, manager)
    app.register_blueprint(pages)


def services() -> Services:
    """The :class:`Services` of the app serving the current request."""
    return current_app.extensions[_EXTENSION]


# --- formatting ---------------------------------------------------------------------------


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


def _asset_version() -> str:
    """A digest of the static files, in their URLs: a new admin.js is never a stale one."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parent / "static").iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


ASSET_VERSION = _asset_version()


def local(target: str | None) -> str:
    """``target`` if it is one of the settings pages, else ``/admin/`` (no open redirect)."""
    if target and _LOCAL.fullmatch(target) and "//" not in target:
        return target
    return "/admin/"


# --- sessions and forms -------------------------------------------------------------------


class BadForm(Exception):
    """A form failed its CSRF check."""


def session_of() -> Session | None:
    return request.scope.get(SESSION_SCOPE_KEY)


def fetched() -> bool:
    """Whether admin.js made this request (``X-Requested-With: fetch``)."""
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


async def login_page(next_page: str, error: str | None = None, status: int = 200) -> Any:
    """The sign-in form; its CSRF token lives in a cookie (kept while it is valid)."""
    token = cookie_value(cookies(), LOGIN_COOKIE) or secrets.token_urlsafe(32)
    html = await render_template(
        "admin/login.html",
        csrf=token,
        next=local(next_page),
        error=error,
        asset_version=ASSET_VERSION,
    )
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    set_cookie(response, LOGIN_COOKIE, token, max_age=3600)
    return response


async def render(session: Session, template: str, status: int = 200, **context: Any) -> Any:
    """``admin/<template>`` for ``session``'s user, with the navigation's context."""
    html = await render_template(
        f"admin/{template}",
        session=session,
        user=session.user,
        csrf=session.csrf,
        open_mode=services().users.open,
        flashes=[] if template.startswith("_") else session.take_flashes(),
        path=request.path,
        asset_version=ASSET_VERSION,
        **context,
    )
    return html, status


async def _no_session() -> Any:
    """The answer to a page request without a session."""
    if fetched():  # admin.js reloads, and the page then asks to sign in
        return {"error": "signed out"}, 401
    sessions = services().users.sessions
    if services().users.open and request.method == "GET":  # no key needed: go on
        opened = await sessions.sign_in("")
        assert opened is not None
        return signed_in(redirect(request.path, 303), opened[0])
    if request.method != "GET":
        return redirect("/admin/", 303)
    return redirect(f"/admin/login?next={request.path}", 303)


def page(*, admin: bool = False) -> Callable[[Handler], Handler]:
    """A page that needs a session (and, with ``admin``, an admin); its POSTs need the
    session's CSRF token. The handler gets the session first."""

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def checked(**kwargs: Any) -> Any:
            session = session_of()
            if request.method != "GET" and not same_origin():
                raise BadForm
            if session is None:
                return await _no_session()
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


# --- answers every page shares ------------------------------------------------------------


@pages.after_request
async def secured(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


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


async def page_error(exc: HTTPException) -> Response:
    """An unknown page or a wrong method under ``/admin/``, as a page (not gin's text); a
    signed-in reader keeps the navigation."""
    messages = {404: "There is no such page.", 405: "That page does not take this method."}
    message = messages.get(exc.code or 500, exc.description or "Error.")
    return await page_message(message, exc.code or 500)


async def page_message(message: str, status: int) -> Response:
    """An error page under ``/admin/`` saying ``message`` (a store that cannot save, say);
    a signed-in reader keeps the navigation."""
    session = session_of()
    if session is not None and _EXTENSION in current_app.extensions:
        html, status = await render(session, "error.html", status, message=message)
    else:
        html = await render_template(
            "admin/error.html", message=message, asset_version=ASSET_VERSION
        )
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers.update(SECURITY_HEADERS)
    return response
