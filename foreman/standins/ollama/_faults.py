"""The failures a test turns on in the stand-in (:class:`Faults`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Faults"]


@dataclass
class Faults:
    """Failures applied to every ``/api/chat`` and ``/api/generate`` reply while set.

    Counts are NDJSON lines already written (thinking lines included); ``None`` is off.
    They also apply to ``stream:false`` replies, counted the same way.

    Attributes:
        stall_after: after N lines stop sending and sleep until the client goes away.
        die_after: after N lines abort the connection (the body generator raises, so
            the chunked stream breaks without its final chunk; a ``stream:false``
            reply breaks before its status line in-process, while hypercorn turns
            that into an empty 500).
        runner_error_after: after N lines write Ollama's in-band
            ``{"error":"model runner has unexpectedly stopped, ..."}`` line and end
            (no ``done:true``); ``stream:false`` gets it as a 500.
    """

    stall_after: int | None = None
    die_after: int | None = None
    runner_error_after: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> Faults:
        """Faults from a JSON object of these fields; raises ValueError on anything else."""
        if not isinstance(body, dict):
            raise ValueError("faults must be a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in body.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}")
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{key} must be an integer or null")
        return cls(**body)
