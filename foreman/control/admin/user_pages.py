"""The Users page (admins): ``GET /admin/users``, ``POST /admin/users`` (``name``,
``role``: the new key shown once), ``POST /admin/users/<name>/revoke``.

While foreman is open, the first user closes it: it must be an admin, and its maker
is signed in with its key.
"""

from __future__ import annotations

from typing import Any

from quart import redirect, request
from werkzeug.datastructures import MultiDict

from ...users import create_user, list_users, revoke_user
from ...users.sessions import Session
from ._common import page, pages, render, services, signed_in


async def users_page(session: Session, status: int = 200, **context: Any) -> Any:
    users = services().users
    listed = await users.store.call(list_users)
    revealed, session.revealed = session.revealed, None
    return await render(session, "users.html", status, users=listed, revealed=revealed, **context)


@pages.get("/admin/users")
@page(admin=True)
async def users_list(session: Session) -> Any:
    return await users_page(session, errors={}, values=MultiDict())


@pages.post("/admin/users")
@page(admin=True)
async def user_add(session: Session) -> Any:
    form = await request.form
    users = services().users
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
        await users.sessions.sign_out(session)
        token, session = (await users.sessions.sign_in(key)) or (None, session)
        assert token is not None, "a key just made signs in"
        signed_in(response, token)
        session.flash(f"foreman is closed now: you are signed in as {made['name']}.")
    session.revealed = (made["name"], key)
    return response


@pages.post("/admin/users/<name>/revoke")
@page(admin=True)
async def user_revoke(session: Session, name: str) -> Any:
    users = services().users
    revoked = await users.store.call(revoke_user, name)
    await users.reload()
    session.flash(f"Revoked {name!r}." if revoked else f"No user {name!r}.")
    return redirect("/admin/users", 303)
