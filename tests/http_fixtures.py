"""A local HTTP file server with scripted faults, for hermetic download tests (127.0.0.1 only).

``FaultServer(root)`` serves the files under ``root`` at ``server.url``. ``server.faults[path]`` is a
list of faults that the next requests for ``path`` (relative, no leading slash) get, one each, in
order; once it is empty the file is served normally:

- ``"500"``, ``"503"``, ``"404"``, ...: that status with an empty body;
- ``"429:S"``: status 429 with ``Retry-After: S``;
- ``"hang"``: no answer for ``hang_s`` seconds (set it a little above the client's timeout), then a 500
  if the client is still there; the handler thread always ends;
- ``"truncate"``: status 200 with the full ``Content-Length`` but only half the body, then the
  connection is closed;
- ``"short"``: status 200 with a consistent ``Content-Length`` for half the body (what a proxy that
  lost the rest would send: only a GLB's own header length shows the truncation).

``counts[path]`` counts the requests per path; ``max_in_flight`` is the peak of simultaneous requests;
``delay_s`` holds every answer that long (to make concurrency observable).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FaultServer:
    def __init__(self, root: Path, hang_s: float = 0.5, delay_s: float = 0.0) -> None:
        self.root = Path(root)
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.faults: dict[str, list[str]] = {}
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _begin(self, path: str) -> str | None:
        with self._lock:
            self.counts[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            plan = self.faults.get(path)
            return plan.pop(0) if plan else None

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
            fault = server._begin(path)
            try:
                if server.delay_s:
                    time.sleep(server.delay_s)
                self._answer(path, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. after its timeout)
            finally:
                server._end()

        def _answer(self, path: str, fault: str | None) -> None:
            if fault == "hang":
                time.sleep(server.hang_s)
                fault = "500"
            if fault is not None and fault.split(":")[0].isdigit():
                status, _, retry_after = fault.partition(":")
                self.send_response(int(status))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file = server.root / path
            if ".." in Path(path).parts or not file.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = file.read_bytes()
            sent = body[: len(body) // 2] if fault in ("truncate", "short") else body
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body) if fault == "truncate" else len(sent)))
            self.end_headers()
            self.wfile.write(sent)
            self.close_connection = True

    return Handler
