"""A loopback TCP proxy for resilience tests: forwards bytes, and on request drops or stalls them.

    proxy = TcpProxy(("127.0.0.1", controller_port)).start()
    agent dials proxy.address ...
    proxy.drop()            # close every connection now (both sides see a reset/EOF)
    proxy.refuse(2.0)       # drop, and close new connections at once for 2 s (an outage)
    proxy.stall(3.0)        # stop forwarding for 3 s, connections stay open (a congested link)
    proxy.run_schedule([("stall", 2.0), ("wait", 1.0), ("drop", 0.0)])   # on its own thread
    proxy.stop()

A stalled connection keeps its sockets: what the peers write waits in the kernel buffers and
goes through when forwarding resumes, as on a link that stops moving packets for a while.
Counters (`accepted`, `dropped`, `stalls`, `refused`, `bytes_forwarded`) say what happened.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time

logger = logging.getLogger(__name__)


class TcpProxy:
    def __init__(self, target: tuple[str, int], listen_port: int = 0):
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._refuse_until = 0.0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self.accepted = self.dropped = self.stalls = self.refused = self.bytes_forwarded = 0
        self.refused_at: list[float] = []  # time.monotonic() of each refused connection attempt

    # ---- lifecycle ----

    def start(self) -> TcpProxy:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._forwarding.set()
        self.drop()
        for thread in list(self._threads):
            thread.join(2.0)
        self._listener.close()

    def _spawn(self, target, name: str, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # ---- faults ----

    def drop(self) -> int:
        """Close every open connection; returns how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)
        self.dropped += len(pairs)
        return len(pairs)

    def refuse(self, seconds: float) -> None:
        """Drop every connection, and close new ones at once for `seconds`."""
        self._refuse_until = time.monotonic() + seconds
        self.drop()

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding (for `seconds`, or until `resume()`); connections stay open."""
        self.stalls += 1
        self._forwarding.clear()
        if seconds is not None:
            timer = threading.Timer(seconds, self._forwarding.set)
            timer.daemon = True
            timer.start()

    def resume(self) -> None:
        self._forwarding.set()

    def run_schedule(self, steps: list[tuple[str, float]]) -> threading.Thread:
        """Run ("wait" | "drop" | "refuse" | "stall", seconds) steps in order on a thread of their own.
        A stall or refusal lasts its seconds before the next step starts; a drop is instant."""
        def run() -> None:
            for action, seconds in steps:
                if self._stop.is_set():
                    return
                if action == "drop":
                    self.drop()
                elif action == "refuse":
                    self.refuse(seconds)
                    self._stop.wait(seconds)
                elif action == "stall":
                    self.stall()
                    self._stop.wait(seconds)
                    self.resume()
                elif action == "wait":
                    self._stop.wait(seconds)
                else:
                    raise ValueError(f"unknown proxy step {action!r}")
        return self._spawn(run, "proxy-schedule")

    # ---- forwarding ----

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                self.refused += 1
                self.refused_at.append(time.monotonic())
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                self.refused += 1
                _close(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            self.accepted += 1
            self._spawn(self._pump, "proxy-pump", client, upstream)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if not self._forwarding.wait(0.05):
                    continue
                readable, _, broken = select.select([a, b], [], [a, b], 0.05)
                if broken:
                    break
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError
                    if not self._forwarding.is_set():
                        # a stall began between select and recv: hold these bytes until it ends
                        while not self._forwarding.wait(0.05) and not self._stop.is_set():
                            pass
                    peer[sock].sendall(data)
                    self.bytes_forwarded += len(data)
        except (EOFError, OSError, ValueError):
            pass  # closed by a peer, by drop(), or by stop()
        finally:
            with self._lock:
                if (a, b) in self._pairs:
                    self._pairs.remove((a, b))
            _close(a)
            _close(b)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
