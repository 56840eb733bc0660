"""What the tests share: a real replyd process, a recording reverse proxy
and a webhook receiver, all on 127.0.0.1.

The server binary is ``$REPLYD_BIN``, else the repository's
``target/debug/replyd``. It is started as black-box tests start it
(``replyd serve --config FILE --listen 127.0.0.1:PORT --db DIR/replyd.db``)
and its address is read from its ``replyd listening on`` log line.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx

REPO = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"replyd listening on (http://127\.0\.0\.1:(\d+))")
#: How long a test waits for anything to happen (a server to start, a
#: webhook to arrive) before it fails.
PATIENCE = 20.0

DEFAULT_CONFIG = """
[queues.work]
max_attempts = 3

[queues.other]

[queues.demo]
executor = "demo"

[streams]
retry_ms = 200
"""


def replyd_bin() -> str:
    """The replyd binary under test."""
    return os.environ.get("REPLYD_BIN") or str(REPO / "target" / "debug" / "replyd")


class ReplydServer:
    """One replyd process with its own config and database in ``home``."""

    def __init__(self, home: Path, config: str = DEFAULT_CONFIG) -> None:
        self.home = home
        self.config = home / "replyd.toml"
        self.config.write_text(config)
        self.db = home / "replyd.db"
        self.port = 0
        self.url = ""
        self.log = home / "replyd.log"
        self._proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> "ReplydServer":
        """Starts it (on the port it had, after a restart); returns once it listens."""
        cmd = [
            replyd_bin(), "serve", "--config", str(self.config),
            "--listen", f"127.0.0.1:{self.port}", "--db", str(self.db),
        ]
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        self._proc = proc
        found: "queue.Queue[Optional[Tuple[str, int]]]" = queue.Queue()

        def drain() -> None:
            assert proc.stderr is not None
            with open(self.log, "ab") as log:
                for raw in proc.stderr:
                    log.write(raw)
                    log.flush()
                    match = LISTENING.search(raw.decode("utf-8", "replace"))
                    if match:
                        found.put((match.group(1), int(match.group(2))))
            found.put(None)

        threading.Thread(target=drain, daemon=True).start()
        try:
            where = found.get(timeout=PATIENCE)
        except queue.Empty:
            where = None
        if where is None:
            self.kill()
            raise RuntimeError(f"replyd did not start: {self.log.read_text(errors='replace')[-2000:]}")
        self.url, self.port = where
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def kill(self) -> None:
        """SIGKILL: a crash, nothing drained."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=PATIENCE)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        """Kills it and starts it again on the same port with the same database."""
        self.kill()
        self.start()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the base's naming
        self.server.handle(self)

    do_POST = do_PUT = do_DELETE = do_GET


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle(self, request: _Handler) -> None:
        raise NotImplementedError


class RecordingProxy(_Server):
    """A reverse proxy to a replyd that records each request (method, path,
    headers) and, with ``block_events``, answers every event stream request
    with an HTML page, as a proxy that does not stream might."""

    def __init__(self, upstream: str, *, block_events: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.block_events = block_events
        self.requests: List[Tuple[str, str, Dict[str, str], bytes]] = []
        self._http = httpx.Client(timeout=120.0, follow_redirects=False)
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle(self, request: _Handler) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = request._body()
        with self._lock:
            self.requests.append((request.command, request.path, headers, body))
        if self.block_events and "/events" in request.path.split("?")[0]:
            request._answer(200, {"content-type": "text/html"}, b"<html>no streaming here</html>")
            return
        forward = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        answer = self._http.request(request.command, self.upstream + request.path, headers=forward, content=body)
        passed = {k: v for k, v in answer.headers.items()
                  if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
        request._answer(answer.status_code, passed, answer.content)

    def seen(self, method: str, path_prefix: str) -> List[Dict[str, str]]:
        """Headers of the requests recorded for ``method`` on paths that start with ``path_prefix``."""
        with self._lock:
            return [h for m, p, h, _ in self.requests if m == method and p.startswith(path_prefix)]

    def bodies(self, method: str, path_prefix: str) -> List[Any]:
        """Decoded JSON bodies of the requests recorded for ``method`` on
        paths that start with ``path_prefix``."""
        with self._lock:
            found = [b for m, p, _, b in self.requests if m == method and p.startswith(path_prefix)]
        return [json.loads(b) for b in found if b]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._http.close()


class WebhookReceiver(_Server):
    """Takes webhook deliveries: each (headers, body) goes to ``deliveries``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.deliveries: "queue.Queue[Tuple[Dict[str, str], bytes]]" = queue.Queue()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def handle(self, request: _Handler) -> None:
        body = request._body()
        self.deliveries.put(({k.lower(): v for k, v in request.headers.items()}, body))
        request._answer(200, {"content-type": "application/json"}, json.dumps({"ok": True}).encode())

    def next(self, timeout: float = PATIENCE) -> Tuple[Dict[str, str], bytes]:
        return self.deliveries.get(timeout=timeout)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
