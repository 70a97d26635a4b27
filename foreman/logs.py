"""Logging: one handler on stderr, as text lines or as JSON objects (``FOREMAN_LOG_FORMAT``).

foreman's loggers are all under ``foreman`` (``foreman.access`` has one record per
request; ``foreman.server`` carries hypercorn's errors). Records carry their fields as
attributes too (``extra=``), so the JSON form has them as keys: an access record has
``client``, ``request_id``, ``method``, ``path``, ``model``, ``status``,
``gate_wait`` (seconds or null), ``duration`` (seconds) and ``outcome``.
Tokens and ``Authorization`` headers are never logged.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr), as ``text`` or ``json``.

    Replaces any handlers the root logger had (so it may be called again).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                json_ensure_ascii=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # foreman logs each request itself
