"""The control plane: what foreman says about itself, served by Quart.

Routes: ``GET /healthz`` (liveness), ``GET /readyz`` (503 while the target is
unreachable; both give their details only to a caller with a key) and ``GET /metrics``
(Prometheus, :mod:`foreman.control.metrics`). Later control-plane surfaces live here
too: ``/jobs`` (:mod:`foreman.jobs`), the admin API ``/admin/api/`` and the settings
pages under ``/admin/`` (:mod:`foreman.control.admin`).
Ollama's own routes never do (see :mod:`foreman.dataplane.native`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..backends.manage import Manager
from ..backends.routes import backend_routes
from ..dataplane.errors import ForemanError
from ..dataplane.jsonwire import rfc3339
from ..gateway import Gateway
from ..jobs import job_routes
from ..store import REPLICA, StoreUnavailable
from ..users import USER_SCOPE_KEY
from ..users.routes import user_routes
from . import admin
from .responses import json_response

__all__ = ["CONTROL_PATHS", "brief", "create_control_app", "health", "is_control", "is_page"]

#: Seconds a client is told to wait (``Retry-After``) when the store cannot save.
STORE_RETRY_AFTER = 5
#: Paths the control plane serves, and everything under ``/jobs/`` and ``/admin/``;
#: every other path belongs to the data plane.
CONTROL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/jobs", "/admin"})
CONTROL_PREFIXES = ("/jobs/", "/admin/")


def is_control(path: str) -> bool:
    """Whether ``path`` is foreman's own (control plane) rather than Ollama's."""
    return path in CONTROL_PATHS or path.startswith(CONTROL_PREFIXES)


def is_page(path: str) -> bool:
    """Whether ``path`` is one of the settings pages (``/admin``, ``/admin/...`` but not
    the JSON API under ``/admin/api/``): these sign in with a session cookie."""
    return path == "/admin" or (path.startswith("/admin/") and not path.startswith("/admin/api/"))


def create_control_app(gw: Gateway) -> QuartTrio:
    """Build the Quart-trio app for ``gw``'s control plane. No globals."""
    # root_path: Quart would otherwise look for the package from the working directory
    app = QuartTrio("foreman", root_path=os.path.dirname(os.path.abspath(__file__)))
    app.config.update(RESPONSE_TIMEOUT=None, PROVIDE_AUTOMATIC_OPTIONS=False)

    @app.errorhandler(ForemanError)
    async def foreman_error(exc: ForemanError) -> Response:
        return json_response({"error": exc.message}, exc.status_code)

    if gw is not None and gw.jobs is not None:
        app.register_blueprint(job_routes(gw.jobs))
    if gw is not None and gw.users is not None:
        app.register_blueprint(user_routes(gw.users))
    if gw is not None and gw.backends is not None and gw.users is not None:
        manager = Manager(gw.backends)
        app.register_blueprint(backend_routes(manager))
        admin.install(app, gw, manager)

    @app.errorhandler(StoreUnavailable)
    async def store_unavailable(exc: StoreUnavailable) -> Response:
        # a store fault is transient: Store.watch clears it once the store works again
        message = f"foreman cannot save this now ({exc}); try again later"
        if is_page(request.path) and "admin" in app.blueprints:
            return await admin.page_message(message, 503)
        return json_response({"error": message}, 503, {"Retry-After": str(STORE_RETRY_AFTER)})

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if is_page(request.path) and "admin" in app.blueprints:  # a page people read
            return await admin.page_error(exc)
        # gin's own texts for an unknown route or a wrong method
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(
            exc.code or 500, f"{exc.code} {exc.name}".lower()
        )
        return Response(text, status=exc.code or 500, content_type="text/plain")

    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return json_response(health(gw) if _keyed() else brief(gw))

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        report = health(gw) if _keyed() else brief(gw)
        return json_response(report, 503 if report["status"] != "ok" else 200)

    return app


def _keyed() -> bool:
    """Whether the request came with a valid key (or foreman is open: no key is needed)."""
    return request.scope.get(USER_SCOPE_KEY) is not None


def brief(gw: Gateway) -> dict[str, Any]:
    """What ``/healthz`` and ``/readyz`` tell a caller without a key: ``{"status": "ok" |
    "degraded"}`` (the target unreachable or the store faulty), nothing about targets,
    backends, jobs or the store's error."""
    store_problem = _store_problem(gw) is not None
    return {"status": "degraded" if gw.inventory.degraded.value or store_problem else "ok"}


def _store_problem(gw: Gateway) -> str | None:
    """What is wrong with the store (a fault a call met, or a database that does not
    answer its pings), or None."""
    if gw.store is not None and gw.store.problem.value is not None:
        return gw.store.problem.value
    health = gw.store_health
    if health is not None and not health.reachable:
        return f"database unreachable: {health.error or 'no answer'}"
    return None


def health(gw: Gateway) -> dict[str, Any]:
    """foreman's health report (the body of /healthz and /readyz).

    Shape::

        {"status": "ok" | "degraded", "target": URL, "error": str | None,
         "last_poll": RFC 3339 UTC | None, "last_poll_age_seconds": float | None,
         "models": int, "resident": [name, ...] | None,
         "embedder": {"model", "resident", "warmups", "last_warmup", "last_error"} | None,
         "chats": {"in_flight": 0 | 1, "waiting": int, "max_waiting": int,
                   "waiting_bytes": int},
         "embeds_in_flight": int,
         "jobs": {"queued": {"interactive": int, "batch": int}, "running": id | None},
         "backends": [{"name", "type", "state"}, ...],   (shared backends only)
         "store": {"status": "ok" | "degraded", "error": str | None},
         "database": {"kind", "location", "reachable", "error"} | None, "replica": id}

    ``status`` is "degraded" while the target is unreachable or the store is faulty
    (a full disk, a read-only or vanished database, a database that does not answer:
    ``store.error`` says which).
    """
    inventory, residency = gw.inventory, gw.residency
    gate = gw.gate.statistics()
    last = inventory.last_success
    embedder = None
    if residency.embed_model is not None:
        embedder = {
            "model": residency.embed_model,
            "resident": residency.embedder_resident(),
            "warmups": residency.warmups,
            "last_warmup": rfc3339(residency.last_warmup),
            "last_error": residency.last_warmup_error,
        }
    store_problem = _store_problem(gw)
    return {
        "status": "degraded" if inventory.degraded.value or store_problem else "ok",
        "target": gw.target.url,
        "error": str(inventory.last_error) if inventory.degraded.value else None,
        "last_poll": rfc3339(last),
        "last_poll_age_seconds": None if last is None else round(time.time() - last, 3),
        "models": len(inventory.models),
        "resident": None if residency.resident is None else list(residency.resident),
        "embedder": embedder,
        "chats": {
            "in_flight": gate.in_flight,
            "waiting": gate.waiting,
            "max_waiting": gw.gate.max_waiting,
            "waiting_bytes": gate.waiting_bytes,
        },
        "embeds_in_flight": gw.embeds_in_flight,
        "jobs": None
        if gw.jobs is None
        else {"queued": dict(gw.jobs.depths), "running": gw.jobs.chat_job},
        "backends": []
        if gw.backends is None
        else [
            {"name": r.name, "type": r.type, "state": gw.backends.status(r.id).state}
            for r in gw.backends.records.values()
            if r.owner is None  # unauthenticated: users' own backends are theirs to see
        ],
        "store": {"status": "degraded" if store_problem else "ok", "error": store_problem},
        "database": None if gw.store_health is None else gw.store_health.report(),
        "replica": REPLICA,
    }
