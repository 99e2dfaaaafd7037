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
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np
import serial
from ziphalp.hw import protocol
from ziphalp.hw.params import LEVEL, EngineParams
from ziphalp.hw.protocol import Command, Status

__all__ = ["BAUDRATE", "ArgumentError", "Board", "BoardError"]

#: Line rate of the UART link.
BAUDRATE = 3_000_000
#: Bytes of one model weight on the wire (int32).
WEIGHT_BYTES = 4


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
    """

    def __init__(self, url: str, *, timeout: float = 5.0):
        self.url = url
        self.timeout = timeout
        self._identity: protocol.Identity | None = None
        self._config: protocol.Configure | None = None
        self._waited = timeout
        self.bytes_sent = 0
        self.bytes_received = 0
        try:
            self._port = serial.serial_for_url(url, baudrate=BAUDRATE, timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as e:
            raise BoardError(f"no board on {url}: {e}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the port."""
        self._port.close()

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
        per_request = self._per_request(protocol.MODEL_HEADER_FORMAT.size)
        for i in range(0, len(data), per_request):
            header = protocol.MODEL_HEADER_FORMAT.pack(start + i, 0)
            self._expect_empty(Command.LOAD_MODEL,
                               header + data[i:i + per_request].tobytes())

    def read_model(self, start: int, count: int) -> np.ndarray:
        """Read ``count`` model weights from index ``start`` as int64.

        Split into several requests when one reply would exceed ``frame_bytes``.
        """
        per_request = self._per_request(0)
        parts = []
        for i in range(0, count, per_request):
            n = min(per_request, count - i)
            reply = self._command(Command.READ_MODEL,
                                  protocol.MODEL_HEADER_FORMAT.pack(start + i, n))
            if len(reply) != n * WEIGHT_BYTES:
                raise BoardError(f"READ_MODEL: reply of {len(reply)} bytes from {self.url}, "
                                 f"expected {n * WEIGHT_BYTES}")
            parts.append(np.frombuffer(reply, "<i4"))
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def stream(self, frame: bytes, flush: bool = False) -> None:
        """Send one frame of whole beats; ``flush`` ends the mini-batch at its end."""
        self._expect_empty(Command.STREAM_FLUSH if flush else Command.STREAM, frame)

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
            ``CODES``, ``LABELS`` or ``SAMPLER``.
        data : bytes
            Whole beats (``beat_bits // 8`` bytes each), at most the region's
            size (``region.beats(params)`` beats).

        Raises
        ------
        ArgumentError
            The board has no resident data, an unknown region, or ``data`` is
            empty, not whole beats or larger than the region (nothing is sent).
        BoardError
            The board refused a request or could not be reached (the requests
            before it were written).
        """
        params = self._resident_params("LOAD_DATA")
        try:
            region = protocol.Region(region)
        except ValueError:
            names = ", ".join(r.name for r in protocol.Region)
            raise ArgumentError(f"LOAD_DATA: region must be one of {names}, "
                                f"not {region!r}") from None
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
        per_request = (params.frame_bytes - header.size) // width
        for start in range(0, beats, per_request):
            chunk = data[start * width:(start + per_request) * width]
            self._expect_empty(Command.LOAD_DATA, header.pack(region, start) + chunk)

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
        self._resident_params("RUN")
        try:
            run = protocol.Run(count, first, stride, samples, seed, bias=int(bias))
            run = run.check(self.identity, board=f"the board on {self.url}")
            payload = run.pack()
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"RUN: {e}") from None
        self._expect_empty(Command.RUN, payload, wait=self.timeout + 2 * self._run_seconds(count))

    def status(self, clear: bool = False) -> protocol.Counters:
        """Read the counters and sticky flags; ``clear`` resets them after reading."""
        reply = self._command(Command.STATUS, bytes([1 if clear else 0]))
        try:
            return protocol.Counters.unpack(reply)
        except ValueError as e:
            raise BoardError(f"STATUS: malformed reply from {self.url}: {e}") from None

    # --- framing ---------------------------------------------------------------------

    def _resident_params(self, what: str) -> EngineParams:
        """The board's parameters, or ArgumentError if it has no resident data."""
        params = self.params
        if not params.resident:
            raise ArgumentError(f"{what}: the board on {self.url} is built without "
                                "resident data")
        return params

    def _per_request(self, header: int) -> int:
        """Weights per model request: fits a frame, whole model words (rows of lanes)."""
        identity = self.identity
        weights = (identity.frame_bytes - header) // WEIGHT_BYTES
        return max(1, weights // identity.lanes) * identity.lanes

    def _run_seconds(self, count: int) -> float:
        """Seconds ``count`` resident samples take at most at the board's clock, by the
        last configuration (0 before one)."""
        config, identity = self._config, self.identity
        if config is None:
            return 0.0
        beats = self.params.beats_for(config.features, config.k, config.double)
        return count * (1 + beats + identity.update_gap) / identity.clock_hz

    def _expect_empty(self, cmd: Command, payload: bytes, wait: float | None = None) -> None:
        reply = self._command(cmd, payload, wait)
        if reply:
            raise BoardError(f"{cmd.name}: unexpected {len(reply)}-byte reply from {self.url}")

    def _command(self, cmd: Command, payload: bytes = b"", wait: float | None = None) -> bytes:
        """Send one request and return the payload of its reply, waited for ``wait``
        seconds (default: the driver's ``timeout``)."""
        try:
            self._port.reset_input_buffer()
            frame = protocol.encode_request(cmd, payload)
            self._port.write(frame)
            self.bytes_sent += len(frame)
            self._port.flush()
            return self._reply(cmd, wait)
        except serial.SerialException as e:
            raise BoardError(f"{cmd.name}: link to {self.url} failed: {e}") from None

    def _read(self, what: str, count: int, deadline: float, started: bool = True,
              patient: bool = False) -> bytes:
        """``count`` bytes by ``deadline``; an empty read of the port (its own timeout)
        ends the wait unless ``patient``."""
        data = b""
        while len(data) < count:
            if time.monotonic() > deadline:
                break
            chunk = self._port.read(count - len(data))
            if not chunk:
                if patient:
                    continue
                break
            self.bytes_received += len(chunk)
            data += chunk
        if len(data) < count:
            missing = "incomplete reply" if started or data else "no reply"
            raise BoardError(f"{what}: {missing} from the board on {self.url} "
                             f"(waited {self._waited:g} s)")
        return data

    def exchange(self, frame: bytes, wait: float | None = None) -> tuple[int, int, bytes]:
        """Send ``frame`` as it is (any bytes: a test's or a fuzzer's request) and return
        the next reply frame's command byte, status byte and payload, whatever the
        status. Raises BoardError when no well-formed reply arrives."""
        try:
            self._port.reset_input_buffer()
            self._port.write(frame)
            self.bytes_sent += len(frame)
            self._port.flush()
            return self._frame("request", wait)
        except serial.SerialException as e:
            raise BoardError(f"request: link to {self.url} failed: {e}") from None

    def _frame(self, what: str, wait: float | None = None) -> tuple[int, int, bytes]:
        """The next reply frame (sync word hunted for, CRC checked): command, status
        and payload bytes."""
        self._waited = self.timeout if wait is None else wait
        deadline = time.monotonic() + self._waited
        window = self._read(what, len(protocol.SYNC), deadline, started=False,
                            patient=wait is not None)
        while window != protocol.SYNC:
            window = window[1:] + self._read(what, 1, deadline)
        header = self._read(what, 4, deadline)
        echo, status, length = struct.unpack("<BBH", header)
        rest = self._read(what, length + 2, deadline)
        payload, (crc,) = rest[:-2], struct.unpack("<H", rest[-2:])
        if crc != protocol.crc16(header + payload):
            raise BoardError(f"{what}: corrupt reply from {self.url} (CRC mismatch)")
        return echo, status, payload

    def _reply(self, cmd: Command, wait: float | None = None) -> bytes:
        echo, status, payload = self._frame(cmd.name, wait)
        if echo != cmd:
            raise BoardError(f"{cmd.name}: reply from {self.url} is for command 0x{echo:02x}")
        try:
            status = Status(status)
        except ValueError:
            raise BoardError(f"{cmd.name}: unknown status 0x{status:02x} "
                             f"from {self.url}") from None
        if status != Status.OK:
            raise BoardError(f"{cmd.name} refused by the board on {self.url}: "
                             f"{status.name} ({status.describe()})")
        return payload
