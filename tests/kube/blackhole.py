"""A TCP proxy in front of an apiserver that can stop answering without closing anything.

A stopped apiserver refuses connections at once, which every client notices. The harder
failure is an endpoint that accepts the connection and then says nothing (a hung load
balancer, a half-open tunnel, a firewall that drops replies): only a client-side timeout ends
the wait. ``hang()`` makes the proxy do that: new connections are accepted and never read,
open ones stop forwarding in both directions; ``resume()`` lets the bytes flow again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class HangingProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = threading.Event()
        self.held: list[socket.socket] = []  # accepted while hung: open, never answered
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def hang(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        self.hang()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        self.closed.set()
        self.flowing.set()
        self.listener.close()
        for s in self.held:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        self.flowing.wait()  # accepted while hung: nothing is read, nothing answered
        if self.closed.is_set():
            return
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self.held.append(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True,
                         name="proxy-down").start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()  # hung: what arrived is held back, not forwarded
                if self.closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
