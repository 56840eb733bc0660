"""A job's result as the worker gave it: bytes with a content type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union


def _essence(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    """Whether a media type is JSON (``application/json`` or ``...+json``)."""
    essence = _essence(content_type)
    return essence == "application/json" or essence.endswith("+json")


@dataclass(frozen=True)
class JobResult:
    """A result: the exact bytes and the content type the worker gave them.

    A client gets one from ``result(id)`` (or on ``Job.result`` after
    ``submit(..., wait=N)``); a worker's handler may return one to complete
    its job with a body of its own type, e.g.
    ``JobResult("image/png", png_bytes)``.
    """

    content_type: str
    """The media type, as served (``application/json`` for JSON results)."""
    body: bytes
    """The result's bytes, unchanged."""
    status: int = 200
    """The HTTP status it was served with (an upstream's own 2xx for the
    gateway and ``http`` queues, else 200)."""

    @property
    def is_json(self) -> bool:
        """Whether the content type is JSON."""
        return is_json_type(self.content_type)

    def json(self) -> Any:
        """The body decoded as JSON (``ValueError`` if it is not JSON)."""
        return json.loads(self.body)

    def text(self) -> str:
        """The body decoded with the content type's charset (UTF-8 by default)."""
        charset = "utf-8"
        for param in self.content_type.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        return self.body.decode(charset, errors="replace")

    @property
    def value(self) -> Union[Any, bytes]:
        """The decoded JSON when the result is JSON, else the raw bytes."""
        return self.json() if self.is_json else self.body
