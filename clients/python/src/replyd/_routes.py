"""Every (method, path) the SDK calls, in one table.

A test checks each against ``clients/openapi.json``, so a route the server
does not have cannot slip in. Paths are templates; :func:`path` fills them
in with each value percent-encoded as one segment.
"""

from __future__ import annotations

from typing import Dict, NamedTuple
from urllib.parse import quote


class Route(NamedTuple):
    """One endpoint of replyd's API."""

    method: str
    """The HTTP method."""
    path: str
    """The path template, as the OpenAPI document names it."""
    idempotent: bool
    """Whether sending it again after a connection broke mid-request is
    harmless (so the client retries it then). Any call is retried when the
    connection could not even be opened."""


ROUTES: Dict[str, Route] = {
    # The client side (API.md §1). Submit is idempotent through the
    # Idempotency-Key the client always sends.
    "submit": Route("POST", "/v1/jobs", True),
    "get": Route("GET", "/v1/jobs/{id}", True),
    "result": Route("GET", "/v1/jobs/{id}/result", True),
    "cancel": Route("POST", "/v1/jobs/{id}/cancel", False),
    "delete": Route("DELETE", "/v1/jobs/{id}", False),
    "list": Route("GET", "/v1/jobs", True),
    # Server-Sent Events (API.md §3).
    "events": Route("GET", "/v1/jobs/{id}/events", True),
    # The worker side (API.md §5).
    "lease": Route("POST", "/v1/queues/{queue}/lease", False),
    "heartbeat": Route("POST", "/v1/jobs/{id}/heartbeat", True),
    "progress": Route("POST", "/v1/jobs/{id}/progress", True),
    "complete": Route("POST", "/v1/jobs/{id}/complete", False),
    "fail": Route("POST", "/v1/jobs/{id}/fail", False),
    # Webhook JWTs' keys (no credentials needed).
    "jwks": Route("GET", "/.well-known/jwks.json", True),
}


def path(name: str, **params: str) -> str:
    """The path of route ``name`` with its ``{params}`` filled in."""
    template = ROUTES[name].path
    return template.format(**{k: quote(v, safe="") for k, v in params.items()})
