"""A small HTTP server on 127.0.0.1 for tests that fetch from a PCCS, a PCS, a CRL address or a
model mirror."""

from __future__ import annotations

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LoopbackHttpServer:
    """Answers GET with `answer(path)` -> (status, body, headers); records every requested path.
    A context manager: the server runs inside the `with` block and is stopped at its end."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                status, body, headers = outer.answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        """What GET `path` returns; each subclass says (FakePccs, the PCS stand-in, LoopbackFileServer)."""
        raise NotImplementedError(f"{type(self).__name__} must define answer(path)")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class LoopbackFileServer(LoopbackHttpServer):
    """Serves the files under `root` (GET /<relative path>; 404 for anything else)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root.resolve()

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        target = (self.root / urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/")).resolve()
        if self.root not in target.parents or not target.is_file():
            return 404, b"not found", {}
        return 200, target.read_bytes(), {"Content-Type": "application/octet-stream"}
