"""Running the app with uvicorn: in the foreground for ``chatforge serve`` (printing its URL once
the socket is bound), or on a thread for tests, notebooks and benchmarks.
"""

from __future__ import annotations

import contextlib
import threading
import time

import uvicorn
from fastapi import FastAPI


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing its URL once the socket is bound (``--port 0`` picks a free port)."""

    url = ""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{host}:{port}/"
            print(f"chatforge serve: listening on {self.url} (chat page {self.url}, API {self.url}v1)", flush=True)


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0):
    """Run ``app`` with uvicorn on a thread until the block ends; yields the base URL
    (``http://127.0.0.1:PORT/``). For tests, notebooks and benchmarks."""
    server = AnnouncingServer(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="chatforge-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield server.url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
