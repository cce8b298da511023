"""What a sweep's console shows: its own lines, one line per trial and epoch, the results.
TensorFlow's C++ start-up lines (oneDNN, CUDA probing), Python warnings, MLflow's and Ray Train's
INFO lines (checkpoint paths), Ray's notices that token authentication is on and that a Tune
step was slow, and each trial's own detailed per-epoch lines are off unless `--verbose`
(MEDSWEEP_VERBOSE=1), in the driver and in every Ray worker. The options several command lines
share (`--tracking-uri`, `--verbose`) are worded once here too.

Read lazily from the environment (MEDSWEEP_VERBOSE), so a worker on another node follows the
driver once `connect_ray` has put `worker_env()` in Ray's runtime_env. No TensorFlow, Ray or
MLflow import at module level.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Callable, Iterator, TextIO

VERBOSE_ENV = "MEDSWEEP_VERBOSE"
# TF_CPP_MIN_LOG_LEVEL 3: no C++ INFO/WARNING/ERROR lines once TensorFlow has read it; the lines
# absl prints while the library loads (before it reads anything) are hidden by
# import_tensorflow.
# MLflow draws a progress bar on stderr for each artifact it downloads (when tqdm is
# installed, as Optuna brings it): not a line for a person.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Ray Train's storage module logs "Checkpoint successfully created at: <path>" at INFO; MLflow
# logs its database set-up at INFO. Their warnings and errors still show.
QUIET_LOGGERS = ("ray.train", "mlflow")
# TensorFlow's Python-side warnings (tf.function retracing notices) as well; its errors still show.
QUIET_ERRORS_ONLY = ("tensorflow",)
# Library lines dropped by what they say, each from one logger: Ray's notice that token
# authentication is on (logged whenever `ray.init` starts a local cluster, where it is on by
# default and stays on; its warning when authentication is off still shows), and Tune's notice
# that a step took over 0.5 s (the driver's MLflow writes, on a loaded CPU: nothing to act on).
QUIET_MESSAGES = {
    "ray._private.authentication.authentication_token_setup":
        "Token authentication is enabled for this Ray cluster",
    "ray.tune.utils.util": "which may be a performance bottleneck",
}


class _DropMessage(logging.Filter):
    """Drops the records whose message contains `text`; every other record passes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.getMessage())


_FILTERS = {name: _DropMessage(text) for name, text in QUIET_MESSAGES.items()}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def worker_env(is_verbose: bool | None = None) -> dict[str, str]:
    """Environment variables for Ray's runtime_env: every worker, on any node, as the driver."""
    is_verbose = verbose() if is_verbose is None else is_verbose
    return {VERBOSE_ENV: "1"} if is_verbose else {VERBOSE_ENV: "0", **QUIET_ENV}


def set_verbose(on: bool) -> None:
    """A CLI's --verbose, applied before anything loads: on, this process and (through Ray's
    runtime_env) every worker it starts show everything; off, this process is quieted now."""
    if on:
        os.environ[VERBOSE_ENV] = "1"
    quiet_process()


def quiet_process() -> None:
    """Apply the console settings to this process (the driver, or a trial's worker), as the
    workers get them: --verbose is the one switch. Harmless to call again."""
    if verbose():
        return
    os.environ.update(QUIET_ENV)
    warnings.filterwarnings("ignore")
    # Some imports reset the warning filters (mlflow.pyfunc's chain does); what shows a warning
    # stays replaced.
    warnings.showwarning = _drop_warning
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in QUIET_ERRORS_ONLY:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, drop in _FILTERS.items():
        logging.getLogger(name).addFilter(drop)  # added once, however often this runs
    sys.unraisablehook = _exit_unraisable_dropped


def _exit_unraisable_dropped(unraisable) -> None:
    """`sys.unraisablehook` when quiet: a trial's process that Tune ends (ASHA stopping it, the
    sweep's end, Ctrl+C) gets SIGTERM, and Ray's handler raises SystemExit in whatever runs
    at that instant; inside a weakref callback Python cannot raise it and prints "Exception
    ignored in ..." with a traceback, forwarded to the driver's console. That exit is the
    intended one: dropped. Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
        return
    sys.__unraisablehook__(unraisable)


def trial_log(line: str) -> None:
    """A trial's own lines: its detailed per-epoch and per-phase lines only when verbose (the
    driver prints one line per trial and epoch, `sweep/progress.py`; MLflow has every curve);
    warnings, resumes and early stops always."""
    if verbose() or not line.startswith(("epoch ", "phase ")):
        print(line, flush=True)


RULE_WIDTH = 78


def rule(title: str) -> str:
    """`== title ======`: the line that opens a part of a sweep's summary."""
    line = f"== {title} "
    return line + "=" * max(2, RULE_WIDTH - len(line))


def say(line: str) -> None:
    """A sweep's own line, flushed at once: it interleaves in order with Ray's forwarded worker
    output and shows at once when piped (`make demo | tee`)."""
    print(line, flush=True)


def detail(log: Callable[[str], None], line: str) -> None:
    """A line that a later summary repeats, or one per item of a loop the summary counts: shown
    only when verbose."""
    if verbose():
        log(line)


# A sweep's lines that say only that nothing needed doing (a decode on a miss is progress and
# shows; a hit is not): verbose only.
ROUTINE_PREFIXES = ("cache hit: ",)


def once(log: Callable[[str], None] = print) -> Callable[[str], None]:
    """`log` that skips a line identical to one it has already printed, unless verbose: the
    sweep reloads its data for each stage, and the check that every file is unchanged would
    repeat word for word. Routine lines (`ROUTINE_PREFIXES`) only when verbose."""
    seen: set[str] = set()

    def log_once(line: str) -> None:
        if verbose():
            log(line)
        elif line not in seen and not line.startswith(ROUTINE_PREFIXES):
            seen.add(line)
            log(line)

    return log_once


class Progress:
    """One line that redraws itself on a terminal (`tty=False`: never redrawn). Piped (logs, CI):
    a line per tenth, or none with `piped=False` where the caller's next lines say the work is
    done."""

    def __init__(self, total: int, verb: str, noun: str, rate_unit: str = "",
                 stream: TextIO | None = None, piped: bool = True, tty: bool = True) -> None:
        self.total, self.verb, self.noun, self.rate_unit = total, verb, noun, rate_unit
        self.stream = stream or sys.stderr
        self.start, self.tty, self.piped = time.monotonic(), tty and self.stream.isatty(), piped
        self.shown_tenth = -1

    def update(self, done: int) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        filled = int(30 * done / max(self.total, 1))
        speed = f", {done / elapsed:.1f} {self.rate_unit}" if self.rate_unit else \
            f", {elapsed:.0f} s"
        line = (f"{self.verb} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
                f"{self.noun}{speed}")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
            self.stream.flush()
        elif self.piped and done * 10 // max(self.total, 1) > self.shown_tenth:
            self.shown_tenth = done * 10 // max(self.total, 1)
            print(line, file=self.stream, flush=True)


def _drop_warning(*args, **kwargs) -> None:
    """`warnings.showwarning` when quiet: nothing printed."""


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: C++ code writes there directly, below Python."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> None:
    """Import TensorFlow (and Keras) once, without its C++ start-up lines unless verbose. An
    import error is raised as usual, with its message: only the C++ logging is hidden."""
    quiet_process()
    if "tensorflow" in sys.modules:
        return
    context = contextlib.nullcontext() if verbose() else _stderr_silenced()
    with context:
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # CUDA probing prints here, once


@contextlib.contextmanager
def library_notices_off(*loggers: str) -> Iterator[None]:
    """Unless verbose, a library's INFO and WARNING lines off for one call: MLflow re-applies its
    own logging set-up when its model and registry modules load, and then announces pickling
    and version numbers that the caller reports in its own words. Errors still show."""
    if verbose():
        yield
        return
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# Options that several command lines share, worded once.
def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (else MLFLOW_TRACKING_URI, "
                        "else sqlite:///mlflow/mlflow.db in the working directory)")


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's C++ "
                        "start-up lines, library notices and Python warnings (off by default)")
