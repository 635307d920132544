"""`vfpga serve`: one process that owns one board (or fronts a cluster of
boards, each a Ray actor: ``--ray``) and serves its tenants over HTTP
(uvicorn) and gRPC (grpcio) until SIGTERM or SIGINT.

Shutdown is graceful: the server stops taking new requests (new
connections are refused, new requests on open connections answer 503),
the requests in flight finish and are answered (up to
``shutdown_grace_s``), then every tenant is unloaded and the board released.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket

import uvicorn

from vfpga.driver.emulated import EmulatedDevice
from vfpga.runtime.tenants import Accelerator

from .auth import new_token
from .config import ServerConfig
from .grpc_api import create_server
from .http_api import create_app
from .metrics import Metrics
from .repository import Repository

log = logging.getLogger("vfpga.serving")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server's loop handles SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


def open_board(config: ServerConfig):
    """The accelerator the server fronts: one board, or a cluster of boards (Ray actors)."""
    if config.cluster:
        from vfpga.runtime.cluster import Cluster

        mode = "emulated" if config.emulate else "board" if config.emulate is False else "auto"
        return Cluster(config.boards, config.ray_address, mode=mode, bank_capacity=config.bank_capacity)
    if config.bank_capacity is not None and config.emulate is not False:
        return Accelerator(config.board, device=EmulatedDevice(config.board, bank_capacity=config.bank_capacity))
    return Accelerator(config.board, emulate=config.emulate)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY on TCP only
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Server:
    """The board (or cluster), the repository, the HTTP and gRPC endpoints of one `vfpga serve`."""

    def __init__(self, config: ServerConfig):
        if not config.resolved_admin_token():
            config.admin_token = new_token()
            log.warning("no admin token given (--admin-token or VFPGA_ADMIN_TOKEN): generated admin token %s",
                        config.admin_token)
        self.config = config
        self.accel = open_board(config)
        self.metrics = Metrics()
        self.repo = Repository(self.accel, config, self.metrics)
        self.metrics.watch(self.repo)
        self.app = create_app(self.repo, self.metrics)
        self.sock = listen(config.host, config.port)
        self.port = self.sock.getsockname()[1]
        self.grpc, self.grpc_port = (None, None)
        if config.grpc_port is not None:
            self.grpc, self.grpc_port = create_server(self.repo, config.host, config.grpc_port)
        self.http = _Uvicorn(uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                            timeout_graceful_shutdown=int(config.shutdown_grace_s) or None))
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Begins the graceful shutdown (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, NotImplementedError, RuntimeError):  # not the main thread
                self._loop.add_signal_handler(sig, self._stop.set)
        if self.grpc is not None:
            self.grpc.start()
        http = asyncio.create_task(self.http.serve(sockets=[self.sock]))
        while not self.http.started and not http.done():
            await asyncio.sleep(0.01)
        if http.done():
            await http  # raises what stopped it
        gc.collect()
        gc.freeze()  # the libraries' objects need no more collecting: shorter pauses while serving
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        grpc_at = f"grpc {host}:{self.grpc_port}" if self.grpc is not None else "no grpc"
        log.info("ready: http://%s:%d %s board=%s mode=%s cores=%d", host, self.port, grpc_at, self.accel.board,
                 self.accel.mode, self.accel.n_cores)
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([http, stop], return_when=asyncio.FIRST_COMPLETED)
        await self.shutdown(http)

    async def shutdown(self, http: asyncio.Task) -> None:
        grace = self.config.shutdown_grace_s
        log.info("shutdown: refusing new requests, finishing the ones in flight (up to %.0f s)", grace)
        self.repo.draining = True
        stopped = self.grpc.stop(grace) if self.grpc is not None else None
        self.http.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await http
        if stopped is not None:
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait, grace + 5)
        await asyncio.get_running_loop().run_in_executor(None, self.repo.close)
        log.info("stopped: every tenant unloaded, the board%s released", "s" if self.config.cluster else "")


def run(config: ServerConfig) -> int:
    """Serves until SIGTERM/SIGINT; returns the exit status."""
    server = Server(config)
    asyncio.run(server.serve())
    return 0
