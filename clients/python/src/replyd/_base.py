"""What ``Client`` and ``AsyncClient`` share besides the protocol: the
server's URL, credentials, headers and timeouts of each request."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple, Union
from urllib.parse import urlsplit

import httpx

from ._events import IDLE_TIMEOUT
from ._models import Job
from ._protocol import HOLD_GRACE, Call, RetryPolicy
from ._routes import path
from ._version import __version__

#: Where a replyd listens by default.
DEFAULT_URL = "http://127.0.0.1:8202"
#: Seconds to open a connection.
CONNECT_TIMEOUT = 10.0


def job_id_of(job: Union[str, Job]) -> str:
    """The id of a job given as its id or its representation."""
    return job if isinstance(job, str) else job.id


class BaseClient:
    """The configuration of a client; see :class:`replyd.Client`."""

    def __init__(
        self,
        base_url: str,
        api_key: Optional[str],
        timeout: float,
        retry: Optional[RetryPolicy],
        headers: Optional[Dict[str, str]],
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"invalid replyd URL {base_url!r}: it must be http(s)://HOST[:PORT][/PATH]")
        self._base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._api_key = api_key or None
        self._timeout = float(timeout)
        self.retry = retry if retry is not None else RetryPolicy()
        """When calls are sent again (429, 503, connection failures)."""
        self._headers = {"User-Agent": f"replyd-python/{__version__}"}
        if headers:
            self._headers.update(headers)

    @property
    def base_url(self) -> str:
        """The server's URL, without a trailing slash."""
        return self._base

    def __repr__(self) -> str:
        key = "<redacted>" if self._api_key else None
        return f"{type(self).__name__}({self._base!r}, api_key={key})"

    # ---- requests ----------------------------------------------------
    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self._base + path_or_url

    def _request_headers(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        headers = dict(self._headers)
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if extra:
            headers.update(extra)
        return headers

    def _call_timeout(self, call: Call[Any]) -> httpx.Timeout:
        read = self._timeout + (call.hold + HOLD_GRACE if call.hold > 0 else 0.0)
        return httpx.Timeout(self._timeout, connect=min(CONNECT_TIMEOUT, self._timeout), read=read)

    def _request_args(self, call: Call[Any]) -> Dict[str, Any]:
        args: Dict[str, Any] = {
            "headers": self._request_headers(call.headers),
            "params": call.params,
            "timeout": self._call_timeout(call),
        }
        if call.has_json:
            args["json"] = call.json
        elif call.content is not None:
            args["content"] = call.content
        return args

    def _stream_timeout(self, deadline: Optional[float]) -> httpx.Timeout:
        read = IDLE_TIMEOUT
        if deadline is not None:
            read = max(0.05, min(read, deadline - time.monotonic() + 1.0))
        connect = min(CONNECT_TIMEOUT, self._timeout)
        return httpx.Timeout(self._timeout, connect=connect, read=read)

    def _link(self, link: str) -> str:
        if link.startswith(("http://", "https://")):
            return link
        # Links are paths from the API's root, which base_url is.
        return self._base + "/" + link.lstrip("/")

    def _targets(self, job: Union[str, Job]) -> Tuple[str, str, Optional[str]]:
        """(job id, URL of its event stream, URL to poll it at or None for
        the route). Given the job, its own links, which carry its token (so
        a client without a key can follow it); given an id, the routes."""
        if isinstance(job, Job):
            return job.id, self._link(job.links.events), self._link(job.links.self_)
        return job, self._url(path("events", id=job)), None
