"""Ollama model names: parsing and the normal form foreman keys its state by.

Mirrors ``types/model/name.go`` and ``internal/modelref`` in Ollama (see `docs/ollama-protocol.md`):
a name is ``[host/][namespace/]model[:tag]`` with defaults ``registry.ollama.ai``,
``library`` and ``latest``; matching is case-insensitive per part. So ``llama3``,
``Llama3:LATEST`` and ``registry.ollama.ai/library/llama3:latest`` are one model,
and ``llama3`` is *not* ``llama3:8b``.
"""

from __future__ import annotations

import re

from .errors import ForemanError

__all__ = ["InvalidModelName", "check_printable", "is_cloud", "normalize"]

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidModelName(ForemanError):
    """A model name foreman will not carry (control characters): 400, before the gate."""

    status_code = 400


def check_printable(name: str) -> None:
    """Refuse a model name with control characters (``\\n``, ``\\r``, ``\\0``, ESC...).

    Such a name matches no model, and would otherwise reach the gate, the target and
    foreman's own ``X-Foreman-Backend`` header.

    Raises:
        InvalidModelName: it has one (400, ``{"error": "invalid model name"}``).
    """
    if _CONTROL.search(name):
        raise InvalidModelName("invalid model name")


def _split(name: str) -> tuple[str, str, str, str] | None:
    if name.endswith(":local"):  # modelref's explicit-local suffix
        name = name.removesuffix(":local")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = DEFAULT_TAG
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    parts = name.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, (namespace, model) = DEFAULT_HOST, parts
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        return None
    if not (
        _HOST.fullmatch(host)
        and _NAMESPACE.fullmatch(namespace)
        and _PART.fullmatch(model)
        and _PART.fullmatch(tag)
    ):
        return None
    return host, namespace, model, tag


def normalize(name: str) -> str | None:
    """The case-folded full form of an Ollama model name, or None if it does not parse.

    >>> normalize("Llama3")
    'registry.ollama.ai/library/llama3:latest'
    >>> normalize("hf.co/org/repo:Q4_K_M")
    'hf.co/org/repo:q4_k_m'
    >>> normalize("a:b:c") is None
    True
    """
    parts = _split(name)
    if parts is None:
        return None
    host, namespace, model, tag = parts
    return f"{host}/{namespace}/{model}:{tag}".lower()


def is_cloud(name: str) -> bool:
    """True for names Ollama proxies to ollama.com itself: ``x:cloud``, or a tag ending ``-cloud``.

    Such models are not in ``/api/tags`` unless pulled as stubs.
    """
    parts = _split(name)
    if parts is None:
        return False
    tag = parts[3].lower()
    return tag == "cloud" or tag.endswith("-cloud")
