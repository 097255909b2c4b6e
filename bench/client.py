"""A lean keep-alive HTTP/1.1 client for the load phases of the bench.

The bench's clients run on the same cores as the server they measure. httpx cost about
1.6 ms of CPU per predict request there, taken from the server; http.client with a
ready-made body costs about 0.4 ms, so the table measures the service, not the client.
"""

from __future__ import annotations

import http.client

BOUNDARY = "finetune-bench-boundary"


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request carrying `files`."""
    parts = []
    for name, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), (
        f"multipart/form-data; boundary={BOUNDARY}"
    )


class LeanClient:
    """One persistent connection; reconnects once if the server closed it."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port = host, port
        self.headers = {"Authorization": f"Bearer {key}"}
        self.conn = http.client.HTTPConnection(host, port, timeout=120)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")
