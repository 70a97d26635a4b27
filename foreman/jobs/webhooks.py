"""The job queue's webhook sender: state changes POSTed to each job's ``state_webhook_url``.

A state change writes a delivery row in the same transaction (:mod:`foreman.jobs.records`);
:func:`send_webhooks`, one task of :meth:`foreman.jobs.service.Jobs.run`, sends the due
ones, failed ones again with back-off (1 s doubling up to :data:`WEBHOOK_MAX_BACKOFF`, at
most :data:`WEBHOOK_MAX_ATTEMPTS` attempts), signed with ``FOREMAN_WEBHOOK_SECRET`` if set.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from typing import TYPE_CHECKING, Any

import httpx2
import trio

from ..outbound import AddressPolicy, PolicyBackend, policed_transport
from . import deliveries
from .replicas import LOOK_AGAIN

if TYPE_CHECKING:
    from .service import Jobs

__all__ = ["send_webhooks", "deliver"]

LOGGER = logging.getLogger("foreman.jobs")

#: Seconds between webhook attempts: doubling from 1 up to this, and attempts at most.
WEBHOOK_MAX_BACKOFF = 300.0
WEBHOOK_MAX_ATTEMPTS = 20
WEBHOOK_TIMEOUT = 10.0


async def send_webhooks(jobs: Jobs) -> None:
    """Deliver state webhooks: due ones now, failed ones again with back-off; forever."""
    policed = jobs.webhook_transport or policed_transport(
        PolicyBackend(AddressPolicy.of(jobs.settings))
    )  # an ordinary user's webhook goes through the outbound address policy
    options: dict[str, Any] = {
        "timeout": WEBHOOK_TIMEOUT,
        "follow_redirects": False,
        "trust_env": False,
    }
    async with (
        httpx2.AsyncClient(transport=jobs.webhook_transport, **options) as client,
        httpx2.AsyncClient(transport=policed, **options) as users_client,
    ):
        while True:
            wake = jobs.delivery_due
            claim = WEBHOOK_TIMEOUT + 5.0 if jobs.shared else None  # one replica each
            due = await jobs.store.call(deliveries.due_deliveries, jobs.now(), 50, claim)
            if due:  # one job's deliveries go one at a time, in order; jobs in parallel
                async with trio.open_nursery() as batch:
                    for delivery in due:
                        sender = users_client if delivery.get("policed") else client
                        batch.start_soon(deliver, jobs, sender, delivery)
                continue
            upcoming = await jobs.store.call(deliveries.next_delivery_at)
            # a millisecond late, so that the retry is surely due when we look again
            delay = math.inf if upcoming is None else max(0.0, upcoming - jobs.now()) + 0.001
            if jobs.shared:  # another replica's deliveries wake nobody here
                delay = min(delay, LOOK_AGAIN)
            with trio.move_on_after(delay):  # a retry falls due, or a new delivery comes
                await wake.wait()


async def deliver(jobs: Jobs, client: httpx2.AsyncClient, delivery: dict[str, Any]) -> None:
    """Attempt one delivery and record the attempt on its row.

    Whatever the row holds (a URL stored before it was checked, say), a failure is
    recorded on that delivery and the sender goes on: an answer that is not 2xx or
    no answer is tried again with back-off; a URL the client cannot use at all is
    given up at once.
    """
    headers = {"content-type": "application/json", "user-agent": "foreman"}
    if jobs.settings.webhook_secret:
        digest = hmac.new(
            jobs.settings.webhook_secret.encode(), delivery["body"], hashlib.sha256
        ).hexdigest()
        headers["x-foreman-signature"] = f"sha256={digest}"
    status: int | None = None
    error: str | None = None
    usable = True
    attempts = delivery["attempts"] + 1
    url, job_id = delivery["url"], delivery["job_id"]
    try:
        response = await client.post(url, content=delivery["body"], headers=headers)
        status = response.status_code
    except httpx2.HTTPError as exc:
        error = str(exc) or type(exc).__name__
        LOGGER.info("webhook %.200r for job %s: %s", url, job_id, error)
    except Exception as exc:  # noqa: BLE001  (InvalidURL, UnicodeError: nothing to retry)
        error, usable = f"cannot be sent: {exc}"[:500], False
        LOGGER.warning("webhook for job %s %s; given up", job_id, error)
    delivered = status is not None and 200 <= status < 300
    backoff = min(2.0 ** (attempts - 1), WEBHOOK_MAX_BACKOFF)
    next_at = jobs.now() + backoff if usable and attempts < WEBHOOK_MAX_ATTEMPTS else math.inf
    if not delivered and usable and attempts >= WEBHOOK_MAX_ATTEMPTS:
        LOGGER.warning("webhook for job %s given up after %d attempts", job_id, attempts)
    await jobs.store.call(
        deliveries.mark_delivery, delivery["seq"], status, delivered, next_at, error
    )
