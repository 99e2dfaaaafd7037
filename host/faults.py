"""A fault-injecting TCP proxy for the link: a bad serial cable, on purpose.

:class:`FaultProxy` listens on a local port and relays one connection to a
target ``socket://host:port`` (the simulated board), in both directions. Each
byte that passes is, with probability ``rate`` and independently, flipped (one
random bit), dropped, duplicated or delayed (the relay stops for up to
``max_delay`` seconds before it); the kind is drawn uniformly. The draws come
from a seeded generator, one per direction. :attr:`FaultProxy.faults` counts the
faults done, by direction and kind.

``ziphalp train --faults RATE`` (``train(faults=...)``) puts one between the host
and the simulated board; the driver's retries (``ziphalp.host.driver``, "Faults")
must then end the run with exactly the model of a clean one. The proxy is
written by hand: it is a few dozen lines over the standard library's sockets and
threads, and no packaged TCP fault injector works in-process without a daemon.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import numpy as np

__all__ = ["KINDS", "FaultProxy"]

KINDS = ("flip", "drop", "duplicate", "delay")


class FaultProxy:
    """Relay ``target`` (``socket://host:port``) through a local port, damaging bytes.

    Parameters
    ----------
    target : str
        ``socket://host:port`` to connect to when a client connects.
    rate : float
        Probability that a byte suffers a fault (0..1).
    seed : int
        Seed of the fault draws.
    max_delay : float
        Longest stop of a ``delay`` fault, in seconds.

    Attributes
    ----------
    url : str
        ``socket://127.0.0.1:PORT`` to connect to instead of ``target``.
    faults : Counter
        ``(direction, kind)`` -> count, direction ``"to board"`` or ``"to host"``.
    """

    def __init__(self, target: str, rate: float, *, seed: int = 0, max_delay: float = 0.005):
        parts = urlsplit(target)
        if parts.scheme != "socket" or not parts.hostname or not parts.port:
            raise ValueError(f"the fault proxy relays socket://host:port, not {target!r}")
        if not 0 <= rate <= 1:
            raise ValueError(f"fault rate must be in 0..1, not {rate}")
        self.target = (parts.hostname, parts.port)
        self.rate, self.max_delay = rate, max_delay
        self.faults: Counter = Counter()
        self._seeds = np.random.SeedSequence(seed).spawn(2)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._closed.set()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def total(self) -> int:
        """Faults done so far, every direction and kind."""
        with self._lock:
            return sum(self.faults.values())

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return                                  # closed before anyone connected
        board = socket.create_connection(self.target)
        for sock in (client, board):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sockets += [client, board]
        for source, sink, direction, seed in ((client, board, "to board", self._seeds[0]),
                                              (board, client, "to host", self._seeds[1])):
            thread = threading.Thread(target=self._relay, daemon=True,
                                      args=(source, sink, direction,
                                            np.random.default_rng(seed)))
            thread.start()
            self._threads.append(thread)

    def _relay(self, source: socket.socket, sink: socket.socket, direction: str,
               rng: np.random.Generator) -> None:
        try:
            while not self._closed.is_set():
                data = source.recv(4096)
                if not data:
                    break
                for piece in self._damage(data, direction, rng):
                    if isinstance(piece, float):
                        time.sleep(piece)
                    else:
                        sink.sendall(piece)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _damage(self, data: bytes, direction: str, rng: np.random.Generator):
        """``data`` cut at its faulty bytes: byte strings to send and float pauses."""
        hits = np.flatnonzero(rng.random(len(data)) < self.rate)
        start = 0
        for i in hits:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            with self._lock:
                self.faults[direction, kind] += 1
            yield data[start:i]
            byte = data[i:i + 1]
            if kind == "flip":
                yield bytes([byte[0] ^ (1 << int(rng.integers(8)))])
            elif kind == "duplicate":
                yield byte + byte
            elif kind == "delay":
                yield float(rng.uniform(0, self.max_delay))
                yield byte
            start = i + 1                           # a dropped byte is not sent
        yield data[start:]
