"""The ``ziphalp`` command line.

It parses arguments, calls :func:`ziphalp.host.train.train`, prints the loss (and
for classification the accuracy) of each epoch next to the float64 optimum and
writes the outputs. A user error
ends with one line ``ziphalp: error: ...`` on stderr and exit status 2 (usage or
data) or 1 (board or output), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

from tqdm import tqdm
from ziphalp.hw.params import BOARD_PARAMS

from .checkpoint import ResumeError
from .data import BUNDLED, DataError, load
from .driver import BoardError
from .train import (
    ALGOS,
    DEFAULTS,
    HALP_DEFAULTS,
    LEVEL_KINDS,
    LOSSES,
    SAMPLINGS,
    EpochRecord,
    SettingsError,
    TrainResult,
    train,
)

__all__ = ["main", "parser"]

EXIT_BOARD = 1
EXIT_USAGE = 2


def _version() -> str:
    try:
        return version("ziphalp")
    except PackageNotFoundError:
        return "unknown"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``ziphalp``."""
    top = argparse.ArgumentParser(
        prog="ziphalp",
        description="Low-precision SGD training of linear models on small FPGAs.")
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "train", help="train a linear model on a board or the simulated board",
        description="Train a linear model (least squares, logistic regression or a "
                    "linear SVM) on the engine with low-precision features (ZipML: "
                    "k-bit stochastic rounding, double sampling), and report the "
                    "training objective of each epoch next to the float64 optimum. "
                    "Features (and a regression label) are normalised to [-1, 1]; "
                    "losses are in those units. With --algo halp the engine runs "
                    "bit-centering SVRG (HALP: a wide anchor plus a b-bit offset whose grid "
                    "follows the full gradient) on the features rounded once to k-bit "
                    "levels, and each outer iteration reports the loss and its relative "
                    "suboptimality against the exact optimum of that quantised problem. "
                    "On boards with resident data (sim-ulx3s, ulx3s) the data set is loaded "
                    "once, as 8-bit codes, and the board feeds and rounds it itself each "
                    "epoch; on boards built with a replay store the host quantises it once "
                    "and the board replays those samples each epoch (--resident, --stream).")
    p.add_argument("data", metavar="DATA",
                   help="a CSV file (optional header row; label the last column unless "
                        "--label), a LIBSVM/svmlight file (.svm, .libsvm, .svmlight), or "
                        f"a bundled data set: {', '.join(sorted(BUNDLED))}")
    p.add_argument("--board", choices=sorted(BOARD_PARAMS), default="sim",
                   help="board to train on (default: %(default)s, the simulated board)")
    p.add_argument("--port", metavar="PORT",
                   help="serial port or pyserial URL of the board, e.g. /dev/ttyUSB1; "
                        "required for a real board")
    p.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"], metavar="N",
                   help="passes over the data; halp: outer iterations, each a full pass "
                        "plus the inner loop (default: %(default)s)")
    p.add_argument("--algo", choices=ALGOS, default="sgd",
                   help="sgd: mini-batch SGD on stochastically rounded data (ZipML); halp: "
                        "bit-centering SVRG (needs a board with HALP mode: sim-ulx3s, "
                        "ulx3s) (default: %(default)s)")
    p.add_argument("--step", type=float, default=None, metavar="S",
                   help="step size, rounded to the nearest power of two 2**-k (default: "
                        f"{DEFAULTS['step']:g} for sgd; halp: 1/(4L) from the data's "
                        "smoothness L)")
    p.add_argument("--batch", type=_positive_int, default=None, metavar="B",
                   help="mini-batch size; sgd sums the gradients over a batch (default: "
                        f"{DEFAULTS['batch']}); halp takes an inner step on a batch's mean "
                        "(default: 1)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], metavar="N",
                   help="seed of the stochastic rounding and shuffling (default: %(default)s)")
    p.add_argument("--bits", type=_positive_int, default=None, metavar="B",
                   help="sgd: feature precision, 2**B intervals between 2**B + 1 levels, "
                        f"B = 1..8 (default: {DEFAULTS['bits']}); halp: offset width B = "
                        "2..16 and the data precision (at most 8) unless --data-bits "
                        f"(default: {HALP_DEFAULTS['bits']})")
    p.add_argument("--mu", type=_positive_float, default=None, metavar="M",
                   help="halp: grid scale, delta = |g| / (M (2**(B-1) - 1)) rounded to a "
                        "power of two (default: from the data's curvature, step and B)")
    p.add_argument("--inner-steps", type=_positive_int, default=None, metavar="T",
                   help="halp: inner steps per outer iteration, samples drawn uniformly "
                        "with replacement (default: n, the number of samples)")
    p.add_argument("--data-bits", type=_positive_int, default=None, metavar="K",
                   help="halp: data precision K = 1..8 when it differs from --bits")
    p.add_argument("--stale", type=int, default=None, metavar="TAU",
                   help="halp: delay of the inner loop's gradients in samples, 0 (exact "
                        "HALP) up to the board's maximum (6 on the ULX3S): each step's dot "
                        "product sees the model from TAU steps before, so the engine streams "
                        "while it writes the previous update (default: the smallest delay "
                        "that hides the update)")
    p.add_argument("--sampling", choices=SAMPLINGS, default=None,
                   help="sgd: double: two independent stochastic samples per value "
                        "(unbiased); single: one (biased by a hidden ridge term); nearest: "
                        f"deterministic rounding (default: {DEFAULTS['sampling']}); halp "
                        "always rounds to nearest, once")
    p.add_argument("--levels", choices=LEVEL_KINDS, default=DEFAULTS["levels"],
                   help="uniform levels over [-1, 1], or levels minimising the data's "
                        "quantisation variance (default: %(default)s)")
    p.add_argument("--loss", choices=LOSSES, default=DEFAULTS["loss"],
                   help="squared (regression), logistic, hinge or squared-hinge "
                        "(classification, labels +1/-1) (default: %(default)s)")
    p.add_argument("--cost-pos", type=float, default=1.0, metavar="C",
                   help="cost of the positive class, 0..3.98 in steps of 1/64 "
                        "(default: %(default)g)")
    p.add_argument("--cost-neg", type=float, default=1.0, metavar="C",
                   help="cost of the negative class (default: %(default)g)")
    p.add_argument("--l2", type=float, default=0.0, metavar="LAMBDA",
                   help="L2 regularisation lambda/2 ||w||^2, applied as a power-of-two "
                        "decay per batch (default: %(default)g, off)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--resident", dest="resident", action="store_const", const=True,
                       default=None,
                       help="load the data set into the board once (8-bit codes, labels and "
                            "a sampler table) and let the board feed and round it each epoch, "
                            "or, on a board built with a replay store instead, the samples "
                            "quantised once, replayed each epoch; an error if the board has "
                            "neither (sim-ulx3s, ulx3s have resident data) or the data set "
                            "does not fit (default: on the board when it has a store the "
                            "data set fits, else streamed)")
    where.add_argument("--stream", dest="resident", action="store_const", const=False,
                       help="quantise on the host and stream the data every epoch, even to a "
                            "board with a store")
    p.add_argument("--faults", type=float, default=0.0, metavar="RATE",
                   help="simulated boards: relay the link through a proxy that flips, "
                        "drops, duplicates or delays this fraction of its bytes (e.g. 1e-3), "
                        "to see the driver's retries at work (default: none)")
    p.add_argument("--fault-seed", type=int, default=0, metavar="SEED",
                   help="seed of the injected faults (default: %(default)s)")
    p.add_argument("--out", metavar="DIR",
                   help="write model.json, history.json and loss.png into DIR, and "
                        "checkpoint.json at the end of every epoch (default: write nothing)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run whose checkpoint.json is in DIR (killed, or its "
                        "board reset or unplugged): give the same DATA and settings (more "
                        "--epochs may be asked); the board is reloaded and the run ends with "
                        "the model an uninterrupted run would have; outputs go to DIR")
    p.add_argument("--label", metavar="COL",
                   help="CSV label column, by header name or index (default: the last)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _sweep_parser(commands)
    return top


def _sweep_parser(commands) -> None:
    from .sweep import BACKENDS

    p = commands.add_parser(
        "sweep", help="cross-validate a grid of settings (joblib or Dask)",
        description="Run scikit-learn's GridSearchCV over a ziphalp estimator "
                    "(ZipMLRegressor/ZipMLClassifier, or HALPRegressor/HALPClassifier "
                    "with --algo halp; the data set's task picks which) and write one "
                    "table (sweep.csv, sweep.json: the mean cross-validated test and "
                    "training error of each grid point) and a plot of the error against "
                    "the bits, one line per sampling mode (sweep.png). Each fit starts "
                    "its own simulated board, so the fits run in parallel on joblib's "
                    "local processes (--backend loky) or on Dask workers (--backend dask: "
                    "a LocalCluster of --workers processes, or the cluster at "
                    "--scheduler).")
    p.add_argument("data", metavar="DATA", help="a data file or a bundled data set "
                   "(as for train)")
    p.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2,...",
                   help="an estimator parameter and its values, e.g. bits=1,2,4,8 or "
                        "sampling=double,single (repeatable: the grid is the product)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a fixed estimator parameter, e.g. epochs=10 or board=sim "
                        "(repeatable)")
    p.add_argument("--algo", choices=ALGOS, default="sgd",
                   help="ZipML SGD or HALP estimators (default: %(default)s)")
    p.add_argument("--folds", type=_positive_int, default=3, metavar="K",
                   help="cross-validation folds (default: %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="parallel fits: local processes, or Dask LocalCluster workers "
                        "(default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="loky",
                   help="joblib backend (default: %(default)s)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --backend dask: the address of a running Dask scheduler, "
                        "e.g. tcp://10.0.0.1:8786 (default: a LocalCluster here)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the fold split (default: %(default)s)")
    p.add_argument("--label", metavar="COL", help="CSV label column (as for train)")
    p.add_argument("--out", metavar="DIR", default="results/sweep",
                   help="folder for sweep.csv, sweep.json and sweep.png "
                        "(default: %(default)s)")


def _ratio(loss: float, optimum: float | None) -> str:
    if optimum is None:
        return "no finite optimum"
    if optimum <= 1e-9:          # e.g. the hinge loss of separable data: report the excess
        return f"{loss - optimum:.4g} above the optimum"
    return f"{loss / optimum:.4f} x optimum"


def _print_epoch(record: EpochRecord, epochs: int, optimum: float | None) -> None:
    best = f"{optimum:.6g}" if optimum is not None else "n/a"
    accuracy = f"  accuracy {record.accuracy:.4f}" if record.accuracy is not None else ""
    tqdm.write(f"epoch {record.epoch:>{len(str(epochs))}}/{epochs}  loss {record.loss:.6g}  "
               f"optimum {best}  ({_ratio(record.loss, optimum)}){accuracy}  "
               f"{record.cycles} cycles")


def _print_iteration(record: EpochRecord, epochs: int) -> None:
    gap = (f"{record.suboptimality:.3e}" if record.suboptimality is not None
           else "n/a (no finite optimum)")
    accuracy = f"  accuracy {record.accuracy:.4f}" if record.accuracy is not None else ""
    tqdm.write(f"iteration {record.iteration:>{len(str(epochs))}}/{epochs}  "
               f"epoch {record.epoch:.2f}  loss {record.loss:.9g}  suboptimality {gap}"
               f"{accuracy}  {record.full_cycles} + {record.inner_cycles} cycles")


def _traffic(result: TrainResult) -> str:
    """Where the data lived and the host bytes an epoch moved on average."""
    moved = [r.host_bytes for r in result.history if r.host_bytes is not None]
    per_epoch = f", {sum(moved) / len(moved):.0f} host bytes per epoch" if moved else ""
    loaded = result.settings.get("load_bytes", 0)
    load = f" after a {loaded}-byte load" if loaded else ""
    resent = sum(r.retries for r in result.history)
    retries = f"; {resent} requests resent" if resent or result.faults_injected else ""
    if result.faults_injected:
        retries += f" after {result.faults_injected} injected faults"
    return f"data {result.settings.get('data', 'streamed')}{per_epoch}{load}{retries}"


def _summary(result: TrainResult) -> str:
    cycles = sum(r.cycles for r in result.history)
    samples = sum(r.samples for r in result.history)
    seconds = sum(r.seconds for r in result.history)
    per_sample = f"{cycles / samples:.2f}" if samples else "n/a"
    accuracy = result.history[-1].accuracy if result.history else None
    accuracy = f", accuracy {accuracy:.4f}" if accuracy is not None else ""
    if result.algo == "halp":
        s = result.settings
        last = result.history[-1]
        gap = f"{last.suboptimality:.3e}" if last.suboptimality is not None else "n/a"
        return (f"final loss {result.loss:.9g}, suboptimality {gap}{accuracy} after "
                f"{len(result.history)} HALP iterations ({last.epoch:.2f} epochs; "
                f"{s['offset_bits']}-bit offsets, {s['data_bits']}-bit data, mu {s['mu']:.4g}, "
                f"T {s['inner_steps']}, step 2**-{s['shift']}, stale {s['stale']}) on "
                f"{result.board}: "
                f"{cycles} engine cycles ({per_sample} per sample), {seconds:.2f} s; "
                f"{_traffic(result)}")
    return (f"final loss {result.loss:.6g} = {_ratio(result.loss, result.optimum_loss)}"
            f"{accuracy} "
            f"after {len(result.history)} epochs on {result.board}: {cycles} engine cycles "
            f"({per_sample} per sample), {seconds:.2f} s; {_traffic(result)}")


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: object = None, line: str | None = None) -> None:
    tqdm.write(f"ziphalp: warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace) -> None:
    from .report import write_outputs

    def on_epoch(result: TrainResult, record: EpochRecord) -> None:
        if record.iteration is not None:
            _print_iteration(record, args.epochs)
        else:
            _print_epoch(record, args.epochs, result.optimum_loss)

    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise SettingsError("--resume DIR writes into DIR; leave out --out or give the same")
    out = args.resume if args.resume is not None else args.out
    result = train(args.data, board=args.board, port=args.port, epochs=args.epochs,
                   step=args.step, batch=args.batch, seed=args.seed, label=args.label,
                   bits=args.bits, sampling=args.sampling, levels=args.levels, loss=args.loss,
                   costs=(args.cost_pos, args.cost_neg), l2=args.l2,
                   progress=not args.no_progress,
                   on_epoch=on_epoch, algo=args.algo, mu=args.mu,
                   inner_steps=args.inner_steps, data_bits=args.data_bits, stale=args.stale,
                   resident=args.resident, checkpoint=out,
                   resume=args.resume is not None, faults=args.faults,
                   fault_seed=args.fault_seed)
    print(_summary(result))
    if out is not None:
        for path in write_outputs(result, out):
            print(f"wrote {path}")


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import parse_grid, sweep, write_sweep

    if args.scheduler is not None and args.backend != "dask":
        raise SettingsError("--scheduler needs --backend dask")
    grid = parse_grid(args.grid)
    fixed = {}
    for name, values in parse_grid(args.set).items():
        if len(values) != 1:
            raise SettingsError(f"--set {name} takes one value, not {len(values)} "
                                f"(use --grid to sweep it)")
        fixed[name] = values[0]
    dataset = load(args.data, args.label)
    result = sweep(dataset, grid, algo=args.algo, params={"timeout": 30.0} | fixed,
                   folds=args.folds, workers=args.workers, backend=args.backend,
                   scheduler=args.scheduler, seed=args.seed)
    key = f"test_{result.metric}"
    best = min(result.rows, key=lambda row: row[key])
    for row in result.rows:
        point = "  ".join(f"{name}={row[name]}" for name in grid)
        train_error = row[f"train_{result.metric}"]
        print(f"{point}  {result.metric} {row[key]:.6g} (train {train_error:.6g})")
    print(f"{len(result.rows)} grid points x {result.folds} folds with {result.estimator} on "
          f"{result.backend} ({result.workers} workers) in {result.seconds:.1f} s; best "
          + "  ".join(f"{name}={best[name]}" for name in grid))
    for path in write_sweep(result, args.out):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the ``ziphalp`` command line; return the exit status."""
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            (_sweep if args.command == "sweep" else _run)(args)
    except (DataError, SettingsError, ResumeError) as e:
        print(f"ziphalp: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (BoardError, OSError) as e:
        print(f"ziphalp: error: {e}", file=sys.stderr)
        return EXIT_BOARD
    except KeyboardInterrupt:
        print("ziphalp: interrupted", file=sys.stderr)
        return 130
    return 0
