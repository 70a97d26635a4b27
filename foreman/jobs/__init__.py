"""The durable job queue: ``/jobs``, its worker, its webhooks (``docs/adr/0010-the-queue.md``)."""

from .routes import job_routes as job_routes
from .service import Jobs as Jobs
