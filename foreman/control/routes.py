"""The control plane: what foreman says about itself, served by Quart.

Routes: ``GET /healthz`` (liveness), ``GET /readyz`` (503 while the target is
unreachable) and ``GET /metrics`` (Prometheus, :mod:`foreman.control.metrics`). Later
control-plane surfaces live here too: ``/jobs`` (:mod:`foreman.jobs`), the admin API
``/admin/api/`` and the settings pages under ``/admin/`` (:mod:`foreman.control.admin`).
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
from ..store import REPLICA
from ..users.routes import user_routes
from .admin import admin_pages, page_error
from .responses import json_response

__all__ = ["CONTROL_PATHS", "create_control_app", "health", "is_control", "is_page"]

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
        app.register_blueprint(admin_pages(gw, manager))

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if is_page(request.path) and "admin" in app.blueprints:  # a page people read
            return await page_error(exc)
        # gin's own texts for an unknown route or a wrong method
        text = {404: "404 page not found", 405: "405 method not allowed"}.get(
            exc.code or 500, f"{exc.code} {exc.name}".lower()
        )
        return Response(text, status=exc.code or 500, content_type="text/plain")

    @app.route("/healthz", methods=["GET"])
    async def healthz() -> Response:
        return json_response(health(gw))

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.route("/readyz", methods=["GET"])
    async def readyz() -> Response:
        store_down = gw.store_health is not None and not gw.store_health.reachable
        return json_response(health(gw), 503 if gw.inventory.degraded.value or store_down else 200)

    return app


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
         "database": {"kind", "location", "reachable", "error"} | None, "replica": id}
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
    return {
        "status": "degraded" if inventory.degraded.value else "ok",
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
        "database": None if gw.store_health is None else gw.store_health.report(),
        "replica": REPLICA,
    }
