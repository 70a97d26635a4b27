"""The LLM Backends page, ``GET /admin/backends``, and what its forms post.

Each backend's card (status, model dropdown, Test, edit, delete), "+ Add Custom
Endpoint" and the routing preferences (:mod:`.preferences`). ``GET
/admin/backends/live`` is ``{"<id>": {"status": html, "models": html, "sig": str}}``
for admin.js. What a user may do is :class:`~foreman.backends.manage.Manager`'s to say,
as for the JSON API.
"""

from __future__ import annotations

from typing import Any

from quart import redirect, render_template, request
from werkzeug.datastructures import MultiDict

from ...backends import registry
from ...backends.registry import BackendRecord, FieldError
from ...dataplane.errors import ForemanError
from ...users import User
from ...users.sessions import Session
from ._common import TYPES, fetched, page, pages, render, services
from .preferences import preferences_context, preferences_fields

#: Validation messages said in plain words on the page (the API keeps its own).
PLAIN = {
    "1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit": (
        "Use up to 64 letters, digits, dots, dashes or underscores, starting with a letter or"
        " digit (clients write it before a model: gpu-box/llama3.2)."
    ),
    "an http:// or https:// URL": "Write a URL such as http://192.168.1.20:11434.",
    "required for an ollama backend": "An Ollama backend needs its URL.",
    "required for an anthropic backend": "Claude needs an API key.",
}


def plain(errors: dict[str, str]) -> dict[str, str]:
    """``errors`` with the validation rules' terse wording said in plain words."""
    return {field: PLAIN.get(problem, problem) for field, problem in errors.items()}


async def card_of(user: User, record: BackendRecord) -> dict[str, Any]:
    """What a backend's card shows; ``sig`` changes when its model list does."""
    found = services()
    models = await found.manager.models(user, record.id, refresh=False)
    selected = found.backends.selected.get(record.id)
    return {
        "record": record,
        "status": found.manager.status(record.id),
        "models": models,
        "selected": selected,
        "may_change": found.manager.may_change(user, record),
        "sig": "|".join([selected or "", *(f"{m['name']}:{m['available']}" for m in models)]),
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
    cards = [await card_of(user, record) for record in services().manager.on_pages(user)]
    return await render(
        session,
        "backends.html",
        status,
        cards=cards,
        types=TYPES,
        **preferences_context(user, form, values),
        errors=plain(errors or {}),
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
    for record in services().manager.on_pages(session.user):
        card = await card_of(session.user, record)
        live[str(record.id)] = {
            "status": await render_template("admin/_status.html", status=card["status"]),
            "models": await render_template(
                "admin/_model_form.html", card=card, csrf=session.csrf, errors={}
            ),
            "sig": card["sig"],
        }
    return live


def _field_errors(fields: dict[str, Any]) -> dict[str, str]:
    """Every field of an add form that is wrong on its own (the rules stop at the first),
    within the limits the API applies (``FOREMAN_MAX_*``)."""
    errors = {}
    limits = services().manager.limits
    for field, value in fields.items():
        if field == "endpoint" and value is None:
            continue
        try:
            registry.validate({field: value}, creating=False, limits=limits)
        except FieldError as exc:
            errors[exc.field] = exc.problem
    return errors


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
    errors = _field_errors(fields)
    if not errors:
        try:
            record = await services().manager.create(session.user, fields)
        except FieldError as exc:
            errors = {exc.field: exc.problem}
    if errors:
        return await backends_page(session, 422, errors=errors, values=form, form="add")
    session.flash(f"Added backend {record.name!r}.")
    return redirect(f"/admin/backends#backend-{record.id}", 303)


@pages.get("/admin/backends/<int:backend_id>/edit")
@page()
async def backend_edit_form(session: Session, backend_id: int) -> Any:
    record = services().manager.find(session.user, backend_id, change=True)
    return await render(session, "backend_edit.html", record=record, errors={}, values=None)


@pages.post("/admin/backends/<int:backend_id>/edit")
@page()
async def backend_edit(session: Session, backend_id: int) -> Any:
    manager = services().manager
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
        errors = plain({exc.field: exc.problem})
        return await render(
            session, "backend_edit.html", 422, record=record, errors=errors, values=form
        )
    session.flash(f"Saved backend {fields['name']!r}.")
    return redirect(f"/admin/backends#backend-{backend_id}", 303)


@pages.post("/admin/backends/<int:backend_id>/delete")
@page()
async def backend_delete(session: Session, backend_id: int) -> Any:
    manager = services().manager
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
    manager = services().manager
    record = manager.find(session.user, backend_id)
    try:
        result = await manager.test(session.user, backend_id)
    except ForemanError as exc:
        result = {"ok": False, "status": manager.status(backend_id), "models": []}
        result["error"] = exc.message
    if fetched():  # admin.js: the answer in place
        return await render(session, "_test.html", record=record, result=result)
    session.flash(_test_summary(record, result))
    return redirect(f"/admin/backends#backend-{backend_id}", 303)


@pages.post("/admin/backends/<int:backend_id>/model")
@page()
async def backend_model(session: Session, backend_id: int) -> Any:
    form = await request.form
    try:
        record = await services().manager.select(session.user, backend_id, form.get("model"))
    except FieldError as exc:
        if fetched():  # admin.js: the menu's answer in place
            return {"error": plain({"": exc.problem})[""]}, 422
        return await backends_page(
            session, 422, errors={f"model-{backend_id}": exc.problem}, form="model"
        )
    if fetched():
        return {"model": form.get("model")}
    session.flash(f"{record.name}: selected model {form.get('model')}.")
    return redirect(f"/admin/backends#backend-{backend_id}", 303)


@pages.post("/admin/preferences")
@page()
async def preferences_save(session: Session) -> Any:
    form = await request.form
    user = session.user
    found = services()
    try:
        visible = found.backends.visible(user.name)
        fields = preferences_fields(form, visible, found.backends.selected)
        await found.manager.put_preferences(user, fields)
    except FieldError as exc:
        return await backends_page(
            session, 422, errors={exc.field: exc.problem}, values=form, form="preferences"
        )
    session.flash("Preferences saved.")
    return redirect("/admin/backends#preferences", 303)


def _test_summary(record: BackendRecord, result: dict[str, Any]) -> str:
    if result["ok"]:
        count = len(result["models"])
        return f"Test of {record.name}: connected, {count} model{'s' if count != 1 else ''}."
    return f"Test of {record.name}: {result['status']['state']}: {result['error']}"
