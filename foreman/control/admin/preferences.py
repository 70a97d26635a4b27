"""The routing preferences on the LLM Backends page (``POST /admin/preferences``).

The form is the JSON API's ``PUT /admin/api/preferences`` in a browser's terms: a
default backend, "Fallback to Claude if Ollama unavailable", "Use Ollama for code
tasks, Claude for research" (the aliases ``code`` and ``research``) and an editor of
``alias = backend/model`` lines.
"""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import MultiDict

from ...backends.registry import FieldError
from ...users import User
from ._common import services


def preferences_context(user: User, form: str | None, values: MultiDict | None) -> dict[str, Any]:
    """What the preferences form shows: the stored preferences, or what was just posted
    (``values``, when ``form`` is ``"preferences"``)."""
    backends = services().backends
    preferences = backends.preferences_of(user.name)
    aliases = dict(preferences.aliases or {})
    posted = values if form == "preferences" and values is not None else None
    split = _split_on(aliases, backends.visible(user.name))
    return {
        "preferences": preferences,
        "fallback_on": "fallback_to_claude" in posted
        if posted is not None
        else preferences.fallback_to_claude is not False,
        "split_on": "split" in posted if posted is not None else split,
        "split_was": posted.get("split_was", "0") if posted is not None else str(int(split)),
        "aliases_text": "\n".join(f"{k} = {v}" for k, v in sorted(aliases.items())),
    }


def _split_on(aliases: dict[str, str], visible: dict[str, Any]) -> bool:
    """Whether ``code`` goes to an Ollama backend and ``research`` to Claude."""

    def kind(alias: str) -> str | None:
        backend = visible.get(aliases.get(alias, "").partition("/")[0])
        return None if backend is None else backend.type

    return kind("code") == "ollama" and kind("research") == "anthropic"


def preferences_fields(
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
