"""Signing in and out: ``GET``/``POST /admin/login`` (``key``), ``POST /admin/logout``.

The sign-in form's CSRF token lives in a cookie until there is a session; a key made a
moment ago by ``foreman users add`` in another process signs in at once
(:meth:`~foreman.users.Users.authenticate_fresh`).
"""

from __future__ import annotations

from typing import Any

from quart import redirect, request

from ...users.sessions import COOKIE, Session, cookie_value, same_secret
from ._common import (
    LOGIN_COOKIE,
    BadForm,
    cookies,
    local,
    login_page,
    page,
    pages,
    same_origin,
    services,
    session_of,
    signed_in,
)


@pages.get("/admin")
async def bare() -> Any:
    return redirect("/admin/", 308)


@pages.get("/admin/login")
async def login_form() -> Any:
    if session_of() is not None or services().users.open:
        return redirect("/admin/", 303)
    return await login_page(request.args.get("next", ""))


@pages.post("/admin/login")
async def login() -> Any:
    form = await request.form
    expected = cookie_value(cookies(), LOGIN_COOKIE)
    if not same_origin() or not expected or not same_secret(form.get("csrf_token"), expected):
        raise BadForm
    users = services().users
    key = form.get("key", "").strip()
    opened = await users.sessions.sign_in(key)
    if opened is None and await users.refreshed_for(key):
        opened = await users.sessions.sign_in(key)
    if opened is None:
        error = "That key is not valid (or it was revoked)."
        return await login_page(form.get("next", ""), error, 401)
    old = session_of()
    if old is not None:
        await users.sessions.sign_out(old)
    return signed_in(redirect(local(form.get("next")), 303), opened[0])


@pages.post("/admin/logout")
@page()
async def logout(session: Session) -> Any:
    await services().users.sessions.sign_out(session)
    response = redirect("/admin/login", 303)
    response.delete_cookie(COOKIE, path="/admin/")
    return response
