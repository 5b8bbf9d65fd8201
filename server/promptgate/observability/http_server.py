"""The HTTP server beside the gRPC port: aiohttp's web server on the same event loop.

It serves ``/metrics`` today; the web console adds its routes to the same
``app`` before ``start()``. With ``reuse_port`` several server processes
share the port (SO_REUSEPORT), as the gRPC port is shared by ``--workers``.
Requests are not access-logged (a scrape every few seconds would fill the log).
"""

from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger(__name__)

# How long stop() lets requests in progress finish.
SHUTDOWN_TIMEOUT_S = 2.0


class HttpServer:
    """An aiohttp application served on ``host:port`` (0: a free port)."""

    def __init__(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.app = web.Application()
        self._host = host.strip("[]")  # "[::]" -> "::"
        self._port = port
        self._reuse_port = reuse_port
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen and serve; return the bound port."""
        runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handle_signals=False
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_port=self._reuse_port or None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish (briefly), close connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
