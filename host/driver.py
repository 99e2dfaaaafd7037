"""The board driver: commands of :mod:`ziphalp.hw.protocol` over a serial link.

:class:`Board` opens any pyserial port URL, a real port such as ``/dev/ttyUSB1``
or the simulated board's ``socket://127.0.0.1:PORT``, with the same call, and
must not know which one it talks to. Each command sends one request frame and
waits for its reply; every failure becomes a :class:`BoardError`.
"""

from __future__ import annotations

import operator
import struct
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import numpy as np
import serial
from ziphalp.hw import protocol
from ziphalp.hw.params import (
    COST_BITS,
    COST_ONE,
    L2_SHIFT_MAX,
    LEVEL,
    OFFSET_BITS,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)
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


def _integer(cmd: Command, name: str, value, low: int, high: int, where: str = "") -> int:
    """``value`` as an int, checked to lie in ``low..high``, else :class:`ArgumentError`."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ArgumentError(f"{cmd.name}: {name} must be an integer, not {value!r}") from None
    if not low <= value <= high:
        raise ArgumentError(f"{cmd.name}: {name} must be {low}..{high}{where}, not {value}")
    return value


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
    """

    def __init__(self, url: str, *, timeout: float = 5.0):
        self.url = url
        self.timeout = timeout
        self._identity: protocol.Identity | None = None
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
        i = self.identity
        try:
            if bool(i.options & protocol.Options.HALP) != (i.halp_samples > 0):
                raise ValueError(f"HALP option {bool(i.options & protocol.Options.HALP)} "
                                 f"with halp_samples {i.halp_samples}")
            return EngineParams(beat_bits=i.beat_bits, lanes=i.lanes, max_k=i.max_k,
                                max_features=i.max_features, max_batch=i.max_batch,
                                model_bits=i.model_bits, model_frac=i.model_frac,
                                frame_bytes=i.frame_bytes, clock_hz=i.clock_hz,
                                class_costs=bool(i.options & protocol.Options.CLASS_COSTS),
                                l2_decay=bool(i.options & protocol.Options.L2_DECAY),
                                halp_samples=i.halp_samples)
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

    def configure(self, features: int, batch: int, shift: int, k: int = 8,
                  double: bool = True, loss: Loss = Loss.SQUARED, l2_shift: int = 0,
                  cost_pos: int = COST_ONE, cost_neg: int = COST_ONE, *,
                  phase: Phase = Phase.SGD, offset_bits: int = 8, scale_log: int = 0,
                  seed: int = 0, stochastic: bool = False) -> None:
        """Set the run-time configuration (``CONFIGURE``).

        In the SGD phase: clear the gradient and the batch position. The HALP
        phases (``ziphalp.hw.params``, "HALP mode") re-centre the model and run
        the full-gradient pass (``Phase.FULL``), or choose the offset grid and
        run the inner loop (``Phase.INNER``); their samples carry indices
        (:func:`ziphalp.host.quantize.pack_samples`) and ignore ``batch``, the
        flushes and ``l2_shift``.

        Parameters
        ----------
        features : int
            d, 1..``max_features`` of the board.
        batch : int
            Mini-batch size, 1..``max_batch`` of the board.
        shift : int
            Step size ``2**-shift``, 0..``SHIFT_MAX``. In ``Phase.FULL`` it scales
            the sum with the costs (``ceil(log2 n)`` for ``n`` samples).
        k : int
            Precision, 1..``max_k`` of the board: features are fields of ``k + 1 +
            double`` bits over the levels ``l_0 .. l_{2**k}`` of the level table
            (:meth:`load_levels`).
        double : bool
            Double sampling (a field carries two roundings of the value).
        loss : Loss
            The loss whose gradient the engine follows (squared or logistic in
            the HALP phases).
        l2_shift : int
            L2 decay ``w >> l2_shift`` subtracted at each update, 1..``L2_SHIFT_MAX``;
            0 turns it off.
        cost_pos, cost_neg : int
            Cost of the positive and of the negative class, 0..255 with
            ``COST_FRAC`` fraction bits (64 is 1.0). In ``Phase.FULL`` both are
            ``round(2**(COST_FRAC + shift) / n)``.
        phase : Phase
            ``SGD``, or a HALP phase (``FULL``, ``INNER``) on a board built with HALP.
        offset_bits : int
            HALP offset width b, 2..``OFFSET_BITS``.
        scale_log : int
            HALP grid scale, int16: ``round(2**LOG_FRAC * log2(mu * (2**(b-1) - 1)))``.
        seed : int
            Seed of the PRNG lanes (u32), applied by ``Phase.INNER``.
        stochastic : bool
            Stochastic rounding of the offset (else round to nearest).

        Raises
        ------
        ArgumentError
            An argument out of range, or a HALP phase the board does not run
            (nothing is sent).
        BoardError
            The board refused the configuration or could not be reached.
        """
        cmd, identity = Command.CONFIGURE, self.identity
        board = f" on the board on {self.url}"
        features = _integer(cmd, "features", features, 1, identity.max_features, board)
        batch = _integer(cmd, "batch", batch, 1, identity.max_batch, board)
        shift = _integer(cmd, "shift", shift, 0, SHIFT_MAX)
        k = _integer(cmd, "k", k, 1, identity.max_k, board)
        if double not in (0, 1):
            raise ArgumentError(f"CONFIGURE: double must be a bool, not {double!r}")
        try:
            loss = Loss(loss)
        except ValueError:
            raise ArgumentError(f"CONFIGURE: loss must be a Loss "
                                f"({', '.join(member.name for member in Loss)}), "
                                f"not {loss!r}") from None
        l2_shift = _integer(cmd, "l2_shift", l2_shift, 0, L2_SHIFT_MAX)
        cost_pos = _integer(cmd, "cost_pos", cost_pos, 0, (1 << COST_BITS) - 1)
        cost_neg = _integer(cmd, "cost_neg", cost_neg, 0, (1 << COST_BITS) - 1)
        try:
            phase = Phase(phase)
        except ValueError:
            raise ArgumentError(f"CONFIGURE: phase must be a Phase "
                                f"({', '.join(member.name for member in Phase)}), "
                                f"not {phase!r}") from None
        offset_bits = _integer(cmd, "offset_bits", offset_bits, 2, OFFSET_BITS)
        half = 1 << (SCALE_LOG_BITS - 1)
        scale_log = _integer(cmd, "scale_log", scale_log, -half, half - 1)
        seed = _integer(cmd, "seed", seed, 0, (1 << 32) - 1)
        if stochastic not in (0, 1):
            raise ArgumentError(f"CONFIGURE: stochastic must be a bool, not {stochastic!r}")
        options = self.identity.options
        if l2_shift and not options & protocol.Options.L2_DECAY:
            raise ArgumentError(f"CONFIGURE: the engine on {self.url} is built without the "
                                "L2 decay (l2_shift must be 0)")
        costs_built = options & protocol.Options.CLASS_COSTS
        if (cost_pos, cost_neg) != (COST_ONE, COST_ONE) and not costs_built:
            raise ArgumentError(f"CONFIGURE: the engine on {self.url} is built without class "
                                "costs (both costs must be 1.0)")
        if phase != Phase.SGD:
            if not options & protocol.Options.HALP:
                raise ArgumentError(f"CONFIGURE: the engine on {self.url} is built without "
                                    f"HALP mode (phase {phase.name} needs it; use SGD)")
            if loss not in (Loss.SQUARED, Loss.LOGISTIC):
                raise ArgumentError(f"CONFIGURE: phase {phase.name} runs the SQUARED or the "
                                    f"LOGISTIC loss, not {loss.name}")
        mode = (protocol.MODE_DOUBLE * bool(double) | int(loss) << protocol.MODE_LOSS_SHIFT
                | int(phase) << protocol.MODE_PHASE_SHIFT
                | protocol.MODE_STOCHASTIC * bool(stochastic))
        self._expect_empty(cmd, protocol.CONFIGURE_FORMAT.pack(
            features, batch, shift, k, mode, l2_shift, cost_pos, cost_neg, offset_bits,
            scale_log, seed))

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

    def status(self, clear: bool = False) -> protocol.Counters:
        """Read the counters and sticky flags; ``clear`` resets them after reading."""
        reply = self._command(Command.STATUS, bytes([1 if clear else 0]))
        try:
            return protocol.Counters.unpack(reply)
        except ValueError as e:
            raise BoardError(f"STATUS: malformed reply from {self.url}: {e}") from None

    # --- framing ---------------------------------------------------------------------

    def _per_request(self, header: int) -> int:
        """Weights per model request: fits a frame, whole model words (rows of lanes)."""
        identity = self.identity
        weights = (identity.frame_bytes - header) // WEIGHT_BYTES
        return max(1, weights // identity.lanes) * identity.lanes

    def _expect_empty(self, cmd: Command, payload: bytes) -> None:
        reply = self._command(cmd, payload)
        if reply:
            raise BoardError(f"{cmd.name}: unexpected {len(reply)}-byte reply from {self.url}")

    def _command(self, cmd: Command, payload: bytes = b"") -> bytes:
        """Send one request and return the payload of its reply."""
        try:
            self._port.reset_input_buffer()
            self._port.write(protocol.encode_request(cmd, payload))
            self._port.flush()
            return self._reply(cmd)
        except serial.SerialException as e:
            raise BoardError(f"{cmd.name}: link to {self.url} failed: {e}") from None

    def _read(self, cmd: Command, count: int, deadline: float, started: bool = True) -> bytes:
        data = b""
        while len(data) < count:
            if time.monotonic() > deadline:
                break
            chunk = self._port.read(count - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) < count:
            what = "incomplete reply" if started or data else "no reply"
            raise BoardError(f"{cmd.name}: {what} from the board on {self.url} "
                             f"(waited {self.timeout:g} s)")
        return data

    def _reply(self, cmd: Command) -> bytes:
        deadline = time.monotonic() + self.timeout
        window = self._read(cmd, len(protocol.SYNC), deadline, started=False)
        while window != protocol.SYNC:
            window = window[1:] + self._read(cmd, 1, deadline)
        header = self._read(cmd, 4, deadline)
        echo, status, length = struct.unpack("<BBH", header)
        rest = self._read(cmd, length + 2, deadline)
        payload, (crc,) = rest[:-2], struct.unpack("<H", rest[-2:])
        if crc != protocol.crc16(header + payload):
            raise BoardError(f"{cmd.name}: corrupt reply from {self.url} (CRC mismatch)")
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
