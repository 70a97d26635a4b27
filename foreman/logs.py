"""Logging: one handler on stderr, as text lines or as JSON objects (``FOREMAN_LOG_FORMAT``).

foreman's loggers are all under ``foreman`` (``foreman.access`` has one record per
request; ``foreman.server`` carries hypercorn's errors). Records carry their fields as
attributes too (``extra=``), so the JSON form has them as keys: an access record has
``client``, ``request_id``, ``method``, ``path``, ``model``, ``status``,
``gate_wait`` (seconds or null), ``duration`` (seconds) and ``outcome``.
Tokens and ``Authorization`` headers are never logged. The text form escapes control
characters in every field it prints (a ``\n`` in a path becomes ``\\n``), so that no
request can write a line of its own into the log.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["TextFormatter", "configure_logging", "escape_controls"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: C0 and C1 controls, DEL and Unicode's line and paragraph separators, as escapes.
_CONTROLS = {
    code: {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(code, f"\\x{code:02x}")
    for code in (*range(0x20), *range(0x7F, 0xA0))
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape_controls(text: str) -> str:
    """``text`` with every control character escaped (``"a\\nb"`` → ``"a\\\\nb"``)."""
    return text.translate(_CONTROLS)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, each record one line: the fields and the message are escaped
    (:func:`escape_controls`); a traceback foreman itself appends keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape_controls(super().formatMessage(record))


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
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # foreman logs each request itself
