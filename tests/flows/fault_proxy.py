"""A loopback HTTP proxy in front of a real server (moto's S3, the emulator) that can fail
chosen writes, delay requests and count them.

S3 itself cannot be told to fail a write or to answer slowly; this proxy answers 500 to the
PUT/POST requests whose path contains a marker, sleeps before forwarding when told to, and
forwards everything else unchanged, so s3fs, pyarrow and httpx see a real endpoint that breaks
or lags on exactly the requests a test or a benchmark names.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}

# (method, path) -> seconds to wait before forwarding
Delay = Callable[[str, str], float]


class LoopbackProxy:
    def __init__(
        self,
        upstream: str,
        fail_marker: str | None = None,
        delay: float | Delay = 0.0,
    ) -> None:
        target = urlsplit(upstream)
        self.upstream_host = target.hostname or "127.0.0.1"
        self.upstream_port = target.port or 80
        self.fail_marker = fail_marker
        self.delay: Delay = delay if callable(delay) else (lambda method, path, d=delay: d)
        self.failed_writes = 0
        self.requests: Counter[str] = Counter()  # by method
        self.paths: Counter[str] = Counter()  # by "METHOD /path" (no query)
        self._count_lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._count_lock:
                    proxy.requests[self.command] += 1
                    proxy.paths[f"{self.command} {self.path.split('?')[0]}"] += 1
                wait = proxy.delay(self.command, self.path)
                if wait > 0:
                    time.sleep(wait)
                marker = proxy.fail_marker
                if self.command in ("PUT", "POST") and marker and marker in self.path:
                    proxy.failed_writes += 1
                    payload = b"<Error><Code>InternalError</Code></Error>"
                    self.send_response(500)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                head = self.command == "HEAD"
                for key, value in response.getheaders():
                    # A HEAD answer's content-length is the object's size: pass it through.
                    if key.lower() not in _HOP_HEADERS and (
                        head or key.lower() != "content-length"
                    ):
                        self.send_header(key, value)
                if not head:
                    self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def __enter__(self) -> LoopbackProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
