"""Running the app: ``run`` (what ``guardrail serve`` calls) and ``LoopbackServer`` (tests, benchmarks).

Both bind 127.0.0.1 unless told otherwise; a non-loopback host without an API key is refused
unless ``allow_insecure`` is set, so the endpoint is never opened to a network by accident.
Both close a connection that has not sent a request's headers within ``header_timeout_s``
(uvicorn itself only times out idle keep-alive connections, so a client that trickles its
headers one byte at a time would hold a socket forever).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from typing import Optional

import uvicorn

__all__ = ["LoopbackServer", "is_loopback", "run"]

log = logging.getLogger("guardrail.serve")
DEFAULT_HEADER_TIMEOUT_S = 10.0


def header_timeout_protocol(seconds: float = DEFAULT_HEADER_TIMEOUT_S):
    """uvicorn's h11 protocol class, closing a connection whose request headers take over ``seconds``.

    The clock starts when the connection opens, or when the first byte of a further request on a
    kept-alive connection arrives, and stops once h11 has the whole header block.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        header_timeout_s = float(seconds)
        _header_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request's headers
                if self._header_timer is None and not self.transport.is_closing():
                    self._arm_header_timer()
            else:
                self._cancel_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closing a connection that sent no complete request headers in %.0f s", self.header_timeout_s)
                self.transport.close()

    return HeaderTimeoutH11Protocol


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(app, *, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
        allow_insecure: bool = False, shutdown_timeout_s: float = 30.0, log_level: str = "info",
        header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> None:
    """Serve ``app`` with uvicorn until interrupted; SIGINT/SIGTERM drain in-flight requests first."""
    if not is_loopback(host) and api_key is None and not allow_insecure:
        raise ValueError(f"refusing to serve on {host} without an API key; set --api-key (or "
                         f"GUARDRAIL_API_KEY), or pass --insecure to accept an open endpoint")
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(shutdown_timeout_s),
                server_header=False, proxy_headers=False, http=header_timeout_protocol(header_timeout_s))


class LoopbackServer:
    """Run an ASGI app with uvicorn on 127.0.0.1 and a free port, in a background thread.

        >>> with LoopbackServer(app) as server:
        ...     client = OpenAI(base_url=server.url + "/v1", api_key="unused")

    ``url`` is ``http://127.0.0.1:PORT``; leaving the block stops the server (draining requests).
    """

    def __init__(self, app, *, port: int = 0, log_level: str = "warning", ready_timeout_s: float = 120.0,
                 header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S):
        self._config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on",
                                      timeout_graceful_shutdown=10, server_header=False,
                                      http=header_timeout_protocol(header_timeout_s))
        self._server = uvicorn.Server(self._config)
        self._thread: Optional[threading.Thread] = None
        self._ready_timeout_s = ready_timeout_s
        self.url = ""

    def start(self) -> "LoopbackServer":
        self._thread = threading.Thread(target=self._server.run, name="guardrail-serve-loopback", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
