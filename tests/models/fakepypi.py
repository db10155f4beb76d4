"""A loopback HTTP server standing in for PyPI and upstream model hosts in tests.

Serves `/pypi/<name>/<version>/json` (or only `/pypi/<name>/json` when the versioned
document is switched off, with relative file URLs like some mirrors), `/files/<name>` with
HTTP Range support, and can drop a connection half-way or answer 503 a few times.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Logged:
    path: str
    range: str | None
    sent: int = 0


@dataclass
class FakePypi:
    files: dict[str, bytes] = field(default_factory=dict)
    releases: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # -> file names
    versioned_json: bool = True
    drop_after: dict[str, int] = field(default_factory=dict)  # file -> bytes, once
    fail_503: dict[str, int] = field(default_factory=dict)  # path -> remaining 503s
    log: list[Logged] = field(default_factory=list)
    base: str = ""

    def add_file(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.base}/files/{name}"

    def add_wheel(self, package: str, version: str, members: dict[str, bytes]) -> tuple[str, bytes]:
        """Build a wheel holding `members`; returns (filename, wheel bytes)."""
        filename = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        data = buffer.getvalue()
        self.files[filename] = data
        self.releases.setdefault((package, version), []).append(filename)
        return filename, data

    def bytes_sent(self, name: str) -> int:
        return sum(entry.sent for entry in self.log if entry.path == f"/files/{name}")

    def release_json(self, package: str, version: str, relative: bool) -> list[dict[str, object]]:
        out = []
        for filename in self.releases.get((package, version), []):
            data = self.files[filename]
            url = f"../../../files/{filename}" if relative else f"{self.base}/files/{filename}"
            out.append(
                {
                    "filename": filename,
                    "url": url,
                    "size": len(data),
                    "packagetype": "bdist_wheel",
                    "digests": {"sha256": hashlib.sha256(data).hexdigest()},
                }
            )
        return out


def _handler(state: FakePypi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            entry = Logged(self.path, self.headers.get("Range"))
            state.log.append(entry)
            remaining = state.fail_503.get(self.path, 0)
            if remaining:
                state.fail_503[self.path] = remaining - 1
                self._send(503, b"busy")
                return
            parts = self.path.strip("/").split("/")
            if parts[0] == "pypi" and len(parts) == 4 and parts[3] == "json":
                if not state.versioned_json:
                    self._send(404, b"")
                    return
                urls = state.release_json(parts[1], parts[2], relative=False)
                self._send(200 if urls else 404, json.dumps({"urls": urls}).encode())
                return
            if parts[0] == "pypi" and len(parts) == 3 and parts[2] == "json":
                releases = {
                    version: state.release_json(name, version, relative=True)
                    for (name, version) in state.releases
                    if name == parts[1]
                }
                body = json.dumps({"releases": releases}).encode()
                self._send(200 if releases else 404, body)
                return
            if parts[0] == "files" and len(parts) == 2 and parts[1] in state.files:
                entry.sent = self._send_file(parts[1], state.files[parts[1]])
                return
            self._send(404, b"not found")

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_file(self, name: str, data: bytes) -> int:
            start = 0
            header = self.headers.get("Range")
            if header and header.startswith("bytes=") and header.endswith("-"):
                start = int(header[6:-1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return 0
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            drop = state.drop_after.pop(name, None)
            if drop is not None and drop < len(body):
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return drop
            self.wfile.write(body)
            return len(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return None  # clients dropping connections is part of these tests


class FakePypiServer:
    def __init__(self) -> None:
        self.state = FakePypi()
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler(self.state))
        host, port = self.httpd.server_address[:2]
        self.state.base = f"http://{host}:{port}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return self.state.base

    def __enter__(self) -> FakePypi:
        self.thread.start()
        return self.state

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
