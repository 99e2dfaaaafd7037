"""The board driver: commands of :mod:`ziphalp.hw.protocol` over a serial link.

:class:`Board` opens any pyserial port URL, a real port such as ``/dev/ttyUSB1``
or the simulated board's ``socket://127.0.0.1:PORT``, with the same call, and
must not know which one it talks to. Each command sends one request frame and
waits for its reply; every failure becomes a :class:`BoardError`.

Boards with resident data (``Options.RESIDENT``) also take the data set into
their own store (:meth:`Board.load_data`) and feed the engine from it
(:meth:`Board.run`); :mod:`ziphalp.host.resident` builds what is loaded. The
driver counts the bytes it moves (:attr:`Board.bytes_sent`,
:attr:`Board.bytes_received`), so a caller can tell what an epoch cost the link.

Faults
------
Serial links drop and flip bytes. Every request carries a sequence number
(``ziphalp.hw.protocol``, "Sequence numbers and retries"). When a reply does not
come (nothing by the command's deadline, or a silence of :data:`GAP` seconds
once bytes have come), comes garbled (CRC), or says the board saw a garbled
request (``CRC``, ``TIMEOUT``, ``LENGTH``), the driver waits for the line to
fall quiet, so that the board drops any partial request, and sends the same
request again with the same number, up to ``retries`` times: the board answers a
retry of a request it already executed without executing it again, so nothing
is done twice. Replies to older requests are skipped. Then it gives up with a
one-line :class:`BoardError` naming the port and what was lost.
:attr:`Board.retries` counts the resends. A ``STATUS`` that clears is a read
and then a clear, so a retried read still returns the counters.

A long request on a noisy line rarely gets through whole (at one fault in a
thousand bytes, an 8 kB frame almost never), so the driver sizes the requests
it splits (``STREAM``, ``LOAD_DATA``, ``LOAD_MODEL``, ``READ_MODEL``) by the line:
each failed try halves the size of the requests to come (down to
:data:`SMALLEST` bytes), and :data:`CLEAN_RUN` requests in a row that went
through at the first try double it again, up to the board's frame. A resent
request keeps its size and its number, with one exception: a request the board
refused as garbled at every try so far has not been executed, so after two
such tries the driver drops it and sends its payload anew in smaller requests.
On a clean line every request is as large as the frame.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import numpy as np
import serial
from serial.urlhandler import protocol_socket
from ziphalp.hw import protocol
from ziphalp.hw.params import LEVEL, EngineParams
from ziphalp.hw.protocol import Command, Status

__all__ = ["BAUDRATE", "GAP", "RETRIES", "ArgumentError", "Board", "BoardError"]

#: Line rate of the UART link.
BAUDRATE = 3_000_000
#: Bytes of one model weight on the wire (int32).
WEIGHT_BYTES = 4
#: Resends of a request before the driver gives up.
RETRIES = 8
#: Seconds of silence that end a reply once a byte of it has come.
GAP = 0.2
#: Seconds between polls of the port.
POLL = 0.01
#: Smallest request payload the driver shrinks to on a noisy line, in bytes.
SMALLEST = 64
#: Clean requests in a row after which the request size doubles again.
CLEAN_RUN = 16
#: Statuses with which the board refuses a request that was garbled on the way.
TRANSPORT = (Status.CRC, Status.TIMEOUT, Status.LENGTH)


class _Lost(Exception):
    """A reply that did not come whole (retried by :meth:`Board._command`)."""


class _Unsent(Exception):
    """A request refused as garbled at every try: not executed; send it smaller."""


class BoardError(Exception):
    """The board cannot be reached, or it refused or garbled a command."""


class ArgumentError(BoardError, ValueError):
    """A command's argument is out of range for the protocol or for the board.

    Raised before anything is sent; it is both a :class:`BoardError` and a
    :class:`ValueError`.
    """


class Board:
    """A board running the ziphalp engine, reached through a serial port.

    Parameters
    ----------
    url : str
        A pyserial port name or URL (``/dev/ttyUSB1``, ``socket://host:port``).
    timeout : float
        Seconds to wait for each reply.
    retries : int
        Resends of a request whose reply was lost or that the board saw garbled
        (module docstring, "Faults").

    Raises
    ------
    BoardError
        The port cannot be opened.

    Attributes
    ----------
    bytes_sent : int
        Bytes of request frames written to the port since it was opened (sync
        word, header, payload and CRC of every request, whatever its reply).
    bytes_received : int
        Bytes read from the port since it was opened (reply frames, and any
        bytes skipped while hunting for a sync word). Together they are the
        host traffic of the link; callers take differences around the work
        they measure.
    retries : int
        Requests resent since the port was opened.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = RETRIES):
        self.url = url
        self.timeout = timeout
        self.max_retries = retries
        self.retries = 0
        self._seq = 0
        self._limit: int | None = None      # payload bytes a split request carries
        self._clean = 0
        self._identity: protocol.Identity | None = None
        self._config: protocol.Configure | None = None
        self._waited = timeout
        self.bytes_sent = 0
        self.bytes_received = 0
        try:
            self._port = serial.serial_for_url(url, baudrate=BAUDRATE, timeout=POLL)
        except (serial.SerialException, ValueError, OSError) as e:
            raise BoardError(f"no board on {url}: {e}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the port.

        A ``socket://`` port (the simulated board, the fault proxy) is shut here:
        pyserial's own ``close`` of one ends with a 0.3 s sleep, left for servers
        that need time before a quick reconnect. Every simulated board serves one
        session, and a grid search or the estimator checks open and close hundreds.
        """
        port = self._port
        if isinstance(port, protocol_socket.Serial) and port.is_open:
            # (pyserial's own attributes: the socket, and the flag its close() reads)
            sock, port._socket = port._socket, None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            port.is_open = False
        port.close()

    # --- commands --------------------------------------------------------------------

    def identify(self) -> protocol.Identity:
        """Ask the board for its engine parameters; check the protocol version."""
        payload = self._command(Command.IDENTIFY)
        try:
            identity = protocol.Identity.unpack(payload)
        except ValueError as e:
            raise BoardError(f"IDENTIFY: malformed reply from {self.url}: {e}") from None
        if identity.version != protocol.VERSION:
            raise BoardError(f"the board on {self.url} speaks protocol version "
                             f"{identity.version}; this host speaks {protocol.VERSION}")
        self._identity = identity
        return identity

    @property
    def identity(self) -> protocol.Identity:
        """The board's identity (``identify()`` is called on first use)."""
        return self._identity if self._identity is not None else self.identify()

    @property
    def params(self) -> EngineParams:
        """The engine parameters the board reports, as :class:`EngineParams`."""
        try:
            return self.identity.params()
        except ValueError as e:
            raise BoardError(f"the board on {self.url} reports impossible parameters: "
                             f"{e}") from None

    @property
    def halp_samples(self) -> int:
        """Entries of the board's HALP anchor-error cache (0: no HALP mode); the
        sample indices of the HALP phases are ``0..halp_samples - 1``."""
        identity = self.identity
        return identity.halp_samples if identity.options & protocol.Options.HALP else 0

    @property
    def levels_max(self) -> int:
        """Entries of the board's largest level table, ``2**max_k + 1``."""
        return (1 << self.identity.max_k) + 1

    def configure(self, features: int, batch: int, shift: int, **fields) -> None:
        """Set the run-time configuration (``CONFIGURE``).

        In the SGD phase: clear the gradient and the batch position. The HALP
        phases (``ziphalp.hw.params``, "HALP mode") re-centre the model and run
        the full-gradient pass (``Phase.FULL``), or choose the offset grid and
        run the inner loop (``Phase.INNER``); their samples carry indices
        (:func:`ziphalp.host.quantize.pack_samples`) and ignore ``batch``, the
        flushes and ``l2_shift``.

        Parameters
        ----------
        features, batch, shift : int
            d (1..``max_features`` of the board), the mini-batch size
            (1..``max_batch``) and the step size ``2**-shift``.
        **fields
            Any other field of :data:`ziphalp.hw.protocol.CONFIGURE` by name (``k``,
            ``double``, ``loss``, ``phase``, ``stochastic``, ``l2_shift``,
            ``cost_pos``, ``cost_neg``, ``offset_bits``, ``scale_log``, ``seed``);
            the table gives each one's meaning, range and default
            (``print(protocol.CONFIGURE.describe())``).

        Raises
        ------
        ArgumentError
            An unknown field, a value out of range, a field the board is built
            without (a value other than its default), or a HALP phase with a loss
            it does not run (nothing is sent).
        BoardError
            The board refused the configuration or could not be reached.
        """
        try:
            config = protocol.Configure(features, batch, shift, **fields)
            config = config.check(self.identity, board=f"the board on {self.url}")
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"CONFIGURE: {e}") from None
        self._expect_empty(Command.CONFIGURE, config.pack())
        self._config = config

    def load_levels(self, levels: Sequence[int] | np.ndarray) -> None:
        """Load the level table: ``n`` ``LEVEL`` words ``l_0 .. l_{n-1}``.

        A level ``l`` stands for the value ``l * 2**-LEVEL.frac`` and lies in the
        ``LEVEL`` range (-512..511); ``2 <= n <= 2**max_k + 1`` (:attr:`levels_max`).
        Precision ``k`` (:meth:`configure`) reads ``l_0 .. l_{2**k}``. The table is
        kept across :meth:`configure`.

        Raises
        ------
        ArgumentError
            Not a list of 2..``levels_max`` integers in the ``LEVEL`` range (nothing
            is sent).
        BoardError
            The board refused the table or could not be reached.
        """
        most = min(self.levels_max, self.identity.frame_bytes // 2)
        array = np.asarray(levels)
        if array.ndim != 1 or not most >= len(array) >= 2:
            size = f"{len(array)}" if array.ndim == 1 else f"an array of shape {array.shape}"
            raise ArgumentError(f"LOAD_LEVELS: the board on {self.url} takes 2..{most} "
                                f"levels (max_k {self.identity.max_k}), not {size}")
        if array.dtype.kind not in "iu":
            raise ArgumentError(f"LOAD_LEVELS: levels must be integers ({LEVEL} words, "
                                f"value l / {1 << LEVEL.frac}), not {array.dtype}")
        outside = np.flatnonzero((array < LEVEL.min_int) | (array > LEVEL.max_int))
        if outside.size:
            i = int(outside[0])
            raise ArgumentError(f"LOAD_LEVELS: level {i} is {int(array[i])}, outside the "
                                f"{LEVEL} range {LEVEL.min_int}..{LEVEL.max_int}")
        self._expect_empty(Command.LOAD_LEVELS, array.astype("<i2").tobytes())

    def load_model(self, start: int, weights: np.ndarray) -> None:
        """Write model weights (int32) from index ``start``, in as many requests as needed.

        Weight ``j`` is lane ``j % lanes`` of model word ``j // lanes``; each request
        carries whole words and fits ``frame_bytes``.
        """
        weights = np.asarray(weights)
        if weights.size and (weights.min() < -2**31 or weights.max() >= 2**31):
            raise BoardError("LOAD_MODEL: weights do not fit the 32-bit wire format")
        data = weights.astype("<i4")
        lanes = self.identity.lanes

        def send(i: int, n: int) -> None:
            header = protocol.MODEL_HEADER_FORMAT.pack(start + i, 0)
            self._expect_empty(Command.LOAD_MODEL, header + data[i:i + n].tobytes(),
                               splittable=n > lanes)
        self._in_pieces(len(data), lambda: self._per_request(protocol.MODEL_HEADER_FORMAT.size),
                        send)

    def read_model(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` model weights from index ``start`` as int64.

        Split into several requests when one reply would exceed ``frame_bytes``.
        """
        parts = []

        def read(i: int, n: int) -> None:
            reply = self._command(Command.READ_MODEL,
                                  protocol.MODEL_HEADER_FORMAT.pack(start + i, n))
            if len(reply) != n * WEIGHT_BYTES:
                raise BoardError(f"READ_MODEL: reply of {len(reply)} bytes from {self.url}, "
                                 f"expected {n * WEIGHT_BYTES}")
            parts.append(np.frombuffer(reply, "<i4"))
        self._in_pieces(count, lambda: self._per_request(0), read)
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def stream(self, frame: bytes, flush: bool = False) -> None:
        """Send one frame of whole beats; ``flush`` ends the mini-batch at its end.

        On a noisy line the frame goes in several smaller ``STREAM`` requests, cut
        at beats (the last one flushing): the engine keeps its place in a sample
        from one request to the next, so it takes the same beats."""
        width = self.identity.beat_bits // 8

        def send(i: int, n: int) -> None:
            last = i + n == len(frame)
            self._expect_empty(Command.STREAM_FLUSH if flush and last else Command.STREAM,
                               frame[i:i + n], splittable=n > width)
        self._in_pieces(len(frame), lambda: max(width, self.payload_limit // width * width),
                        send)

    def load_data(self, region: protocol.Region, data: bytes) -> None:
        """Load ``data`` into ``region`` of the board's resident store, from beat 0 on.

        Sent in as many ``LOAD_DATA`` requests as needed, each the
        :data:`~ziphalp.hw.protocol.DATA_HEADER` (the region and the request's
        first beat) then whole beats, at most ``frame_bytes`` in all. The first
        request sets the region's loaded length, the others extend it, so the
        region's loaded length ends as the beats of ``data``
        (:mod:`ziphalp.hw.protocol`, ``LOAD_DATA``). :mod:`ziphalp.host.resident`
        builds the regions' contents.

        Parameters
        ----------
        region : protocol.Region
            ``CODES``, ``LABELS`` or ``SAMPLER`` (resident data), ``BEATS`` (a replay
            store): one of the board's (:func:`ziphalp.hw.protocol.regions`).
        data : bytes
            Whole beats (``beat_bits // 8`` bytes each), at most the region's
            size (``region.beats(params)`` beats).

        Raises
        ------
        ArgumentError
            The board has no data store, a region it lacks, or ``data`` is empty,
            not whole beats or larger than the region (nothing is sent).
        BoardError
            The board refused a request or could not be reached (the requests
            before it were written).
        """
        params = self._store_params("LOAD_DATA", params_has="stores_data")
        try:
            region = protocol.Region(region)
            if region not in protocol.regions(params):
                raise ValueError
        except ValueError:
            names = ", ".join(r.name for r in protocol.regions(params))
            raise ArgumentError(f"LOAD_DATA: region must be one of {names} on the board on "
                                f"{self.url}, not {region!r}") from None
        width = params.beat_bits // 8
        data = bytes(data)
        if not data or len(data) % width:
            raise ArgumentError(f"LOAD_DATA: {region.name} takes whole {width}-byte beats, "
                                f"not {len(data)} bytes")
        beats, room = len(data) // width, region.beats(params)
        if beats > room:
            raise ArgumentError(f"LOAD_DATA: {beats} beats do not fit {region.name}, which "
                                f"holds {room} on the board on {self.url}")
        header = protocol.DATA_HEADER.format

        def send(start: int, n: int) -> None:
            chunk = data[start * width:(start + n) * width]
            self._expect_empty(Command.LOAD_DATA, header.pack(region, start) + chunk,
                               splittable=n > 1)
        self._in_pieces(beats, lambda: max(1, (self.payload_limit - header.size) // width),
                        send)

    def run(self, count: int, first: int, stride: int, samples: int, seed: int,
            bias: bool = False) -> None:
        """Feed ``count`` samples from the resident store to the engine (``RUN``).

        Sample ``u`` (from 0) is resident sample ``(first + u * stride) mod
        samples``, rounded on chip by the sampler table with lanes seeded by
        ``seed``; the last one flushes the mini-batch. With ``bias`` the last of the
        configured ``d`` features is the constant 1.0, made by the board (the store
        holds the ``d - 1`` before it: :func:`ziphalp.host.resident.code_rows` of
        the features without the bias column). The engine must be
        configured, and the loaded codes, labels and sampler table must cover
        ``samples`` samples of the configured ``d``. Returns when the engine is
        idle: the reply is awaited for the driver's ``timeout`` plus twice the
        time the run would take at the board's clock if every sample ended a
        batch (``count * (1 + feature beats + update_gap)`` cycles of the last
        configuration), so a long run on a real board is not taken for a silent
        one.

        Raises
        ------
        ArgumentError
            The board has no resident data, or an argument is out of range
            (``count`` 1..2**32 - 1, ``samples`` 1..``resident_samples``,
            ``first`` and ``stride`` below ``samples``, ``seed`` 32 bits); nothing
            is sent.
        BoardError
            The board refused the run (``STATE``: not configured, or beyond the
            data loaded) or could not be reached.
        """
        self._store_params("RUN", params_has="resident")
        try:
            run = protocol.Run(count, first, stride, samples, seed, bias=int(bias))
            run = run.check(self.identity, board=f"the board on {self.url}")
            payload = run.pack()
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"RUN: {e}") from None
        self._expect_empty(Command.RUN, payload, wait=self.timeout + 2 * self._run_seconds(count))

    def replay(self, first: int, count: int) -> None:
        """Feed ``count`` beats of the replay store to the engine (``REPLAY``).

        Beat ``u`` (from 0) is beat ``(first + u) mod loaded`` of the ``BEATS``
        region (``loaded``: the beats :meth:`load_data` put there), the last one
        flushing the mini-batch, exactly as :meth:`stream` of those beats with
        ``flush``. The samples are whatever the host packed into the region
        (:func:`ziphalp.host.quantize.encode_epoch`); the caller keeps ``first`` and
        ``count`` on sample boundaries. Returns when the engine is idle: the reply
        is awaited for the driver's ``timeout`` plus twice the time the beats
        would take if every one ended a batch.

        Raises
        ------
        ArgumentError
            The board has no replay store, or ``first`` (32 bits) or ``count``
            (1..2**32 - 1) is out of range; nothing is sent.
        BoardError
            The board refused the replay (``STATE``: not configured, or ``first``
            not below the beats loaded) or could not be reached.
        """
        params = self._store_params("REPLAY", params_has="replay")
        try:
            replay = protocol.Replay(first, count).check(self.identity,
                                                         board=f"the board on {self.url}")
            payload = replay.pack()
        except (TypeError, ValueError, struct.error) as e:
            raise ArgumentError(f"REPLAY: {e}") from None
        seconds = count * (1 + self.identity.update_gap) / params.clock_hz
        self._expect_empty(Command.REPLAY, payload, wait=self.timeout + 2 * seconds)

    def status(self, clear: bool = False) -> protocol.Counters:
        """Read the counters and sticky flags; ``clear`` resets them after reading (a
        second request, so that a retried read returns what the first saw)."""
        reply = self._command(Command.STATUS, b"\0")
        try:
            counters = protocol.Counters.unpack(reply)
        except ValueError as e:
            raise BoardError(f"STATUS: malformed reply from {self.url}: {e}") from None
        if clear:
            self._command(Command.STATUS, b"\1")
        return counters

    # --- framing ---------------------------------------------------------------------

    def _store_params(self, what: str, params_has: str) -> EngineParams:
        """The board's parameters, or ArgumentError if it lacks the store ``what`` needs
        (``params_has``: the ``EngineParams`` property that says it has it)."""
        params = self.params
        if not getattr(params, params_has):
            lacks = {"stores_data": "resident data or a replay store",
                     "resident": "resident data", "replay": "a replay store"}[params_has]
            raise ArgumentError(f"{what}: the board on {self.url} is built without {lacks}")
        return params

    @staticmethod
    def _in_pieces(count: int, most: Callable[[], int],
                   send: Callable[[int, int], None]) -> None:
        """Send ``count`` units as requests ``send(first, n)`` of at most ``most()``
        units each, asked again before each request (the size follows the line); a
        request refused unexecuted (_Unsent) is sent again at the new size."""
        first = 0
        while first < count:
            n = min(most(), count - first)
            try:
                send(first, n)
            except _Unsent:
                continue
            first += n

    def _per_request(self, header: int) -> int:
        """Weights per model request: fits a frame, whole model words (rows of lanes)."""
        identity = self.identity
        weights = (self.payload_limit - header) // WEIGHT_BYTES
        return max(1, weights // identity.lanes) * identity.lanes

    def _run_seconds(self, count: int) -> float:
        """Seconds ``count`` resident samples take at most at the board's clock, by the
        last configuration (0 before one)."""
        config, identity = self._config, self.identity
        if config is None:
            return 0.0
        beats = self.params.beats_for(config.features, config.k, config.double)
        return count * (1 + beats + identity.update_gap) / identity.clock_hz

    def _expect_empty(self, cmd: Command, payload: bytes, wait: float | None = None,
                      splittable: bool = False) -> None:
        reply = self._command(cmd, payload, wait, splittable)
        if reply:
            raise BoardError(f"{cmd.name}: unexpected {len(reply)}-byte reply from {self.url}")

    def _command(self, cmd: Command, payload: bytes = b"", wait: float | None = None,
                 splittable: bool = False) -> bytes:
        """Send one request and return the payload of its reply, waited for ``wait``
        seconds (default: the driver's ``timeout``); resent on faults (module
        docstring). A ``splittable`` request that the board refused as garbled at
        the first two tries raises _Unsent: it was not executed."""
        self._seq = self._seq % 255 + 1
        frame = protocol.encode_request(cmd, payload, self._seq)
        lost = []
        try:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.retries += 1
                    self._quiet()
                self._send(frame)
                try:
                    status, reply = self._reply_to(cmd, self._seq, wait)
                except _Lost as e:
                    self._adapt(noisy=True)
                    lost.append(str(e))
                    if lost[-2:] == [str(e)] * 2 and str(e).startswith("no reply"):
                        # twice nothing at all: no board there, or a wedged one
                        raise BoardError(f"{cmd.name}: {e}, twice") from None
                    continue
                if status in TRANSPORT:
                    self._adapt(noisy=True)
                    lost.append(f"the board saw a garbled request ({status.name})")
                    if splittable and attempt == 1 and all(
                            reason.startswith("the board saw") for reason in lost):
                        raise _Unsent
                    continue
                if status != Status.OK:
                    raise BoardError(f"{cmd.name} refused by the board on {self.url}: "
                                     f"{status.name} ({status.describe()})")
                if attempt == 0:
                    self._adapt(noisy=False)
                return reply
        except serial.SerialException as e:
            raise BoardError(f"{cmd.name}: link to {self.url} failed: {e}") from None
        raise BoardError(f"{cmd.name}: no good reply from the board on {self.url} after "
                         f"{len(lost)} tries (lost: {'; '.join(dict.fromkeys(lost))})")

    def _adapt(self, noisy: bool) -> None:
        """Halve the request size after a resend; double it after a clean run."""
        if self._identity is None:
            return
        frame = self._identity.frame_bytes
        limit = frame if self._limit is None else self._limit
        if noisy:
            self._limit, self._clean = max(SMALLEST, limit // 2), 0
        else:
            self._clean += 1
            if self._clean >= CLEAN_RUN and limit < frame:
                self._limit, self._clean = min(frame, 2 * limit), 0

    @property
    def payload_limit(self) -> int:
        """Payload bytes of the requests the driver splits, now (module docstring,
        "Faults"): the board's frame on a clean line."""
        frame = self.identity.frame_bytes
        return frame if self._limit is None else min(frame, self._limit)

    def _send(self, frame: bytes) -> None:
        """Write one request frame, dropping whatever the port had received."""
        self._port.reset_input_buffer()
        self._port.write(frame)
        self.bytes_sent += len(frame)
        self._port.flush()

    def _quiet(self) -> None:
        """Wait until the line has been silent for twice the board's inter-byte
        time-out, so that the board has dropped any partial request."""
        quiet = 2 * protocol.TIMEOUT_BYTES_TIME
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            if self._port.read(4096):
                last = time.monotonic()

    def _reply_to(self, cmd: Command, seq: int, wait: float | None) -> tuple[Status, bytes]:
        """The status and payload of the reply to request ``seq`` (replies to older
        requests skipped); _Lost if none comes whole."""
        self._waited = self.timeout if wait is None else wait
        deadline = time.monotonic() + self._waited
        while True:
            echo, status, got, payload = self._frame(deadline)
            if status in TRANSPORT:
                # the board refused bytes sent since the line fell quiet: this request,
                # garbled (maybe in its cmd or seq, which the refusal echoes)
                return Status(status), payload
            if got != seq:
                continue                    # the late reply to an earlier request
            if echo != cmd:
                raise BoardError(f"{cmd.name}: reply from {self.url} is for command "
                                 f"0x{echo:02x}")
            try:
                return Status(status), payload
            except ValueError:
                raise BoardError(f"{cmd.name}: unknown status 0x{status:02x} "
                                 f"from {self.url}") from None

    def _read(self, count: int, deadline: float, started: bool) -> bytes:
        """``count`` bytes: _Lost if ``deadline`` passes first, or (once a byte has
        come, ``started``) the line is silent for :data:`GAP` seconds."""
        data = b""
        last = time.monotonic()
        while len(data) < count:
            chunk = self._port.read(count - len(data))
            now = time.monotonic()
            if chunk:
                self.bytes_received += len(chunk)
                data += chunk
                started, last = True, now
            elif now > deadline or (started and now - last > GAP):
                missing = "incomplete reply" if started else "no reply"
                raise _Lost(f"{missing} from the board on {self.url} "
                            f"(waited {self._waited:g} s)")
        return data

    def exchange(self, frame: bytes, wait: float | None = None) -> tuple[int, int, bytes]:
        """Send ``frame`` as it is (any bytes: a test's or a fuzzer's request) and return
        the next reply frame's command byte, status byte and payload, whatever the
        status (no retries). Raises BoardError when no well-formed reply arrives."""
        try:
            self._send(frame)
            self._waited = self.timeout if wait is None else wait
            echo, status, _, payload = self._frame(time.monotonic() + self._waited)
            return echo, status, payload
        except serial.SerialException as e:
            raise BoardError(f"request: link to {self.url} failed: {e}") from None
        except _Lost as e:
            raise BoardError(f"request: {e}") from None

    def _frame(self, deadline: float) -> tuple[int, int, int, bytes]:
        """The next reply frame (sync word hunted for, CRC checked): command, status,
        sequence number and payload; _Lost if none comes whole."""
        window = self._read(len(protocol.SYNC), deadline, started=False)
        while window != protocol.SYNC:
            window = window[1:] + self._read(1, deadline, started=True)
        header = self._read(protocol.REPLY_HEADER.size, deadline, started=True)
        echo, status, seq, length = protocol.REPLY_HEADER.unpack(header)
        rest = self._read(length + 2, deadline, started=True)
        payload, (crc,) = rest[:-2], struct.unpack("<H", rest[-2:])
        if crc != protocol.crc16(header + payload):
            raise _Lost(f"corrupt reply from {self.url} (CRC mismatch)")
        return echo, status, seq, payload
