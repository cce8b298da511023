"""What a sweep shows while its trials run: one line per trial and epoch, printed by the driver
from what the trial reported to Tune (`EpochLines`, a Tune callback), so it carries no Ray
worker prefix and comes out once however many workers print:

    t03 three_phase lr x3.496 ls 0.1 aug light  epoch 4/8  val_accuracy 0.806  2.9s
    cv t03 fold 2/3                             epoch 4/8  val_accuracy 0.812  3.1s

(the trial's name as in the MLflow runs table, the epoch of the trial's epochs, the task's
validation metric, the epoch's training seconds). Tune's own progress reporter
(`ProgressTable`) prints only with --verbose: the status line whenever trials start or end and
Tune's table at the end of each stage.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from ray import tune
from ray.tune import CLIReporter

from orchestrator import console
from orchestrator.naming import replicate_of, short_trial_name
from orchestrator.sweep.staged import FINALIST_KEY, FOLD_KEY, is_fold_trial
from orchestrator.sweep.trainable import SweepContext, run_name, trial_config

SECONDS_KEY = "epoch_seconds"  # reported by the trainer: the epoch's training time


def epoch_line(name: str, epoch: int, epochs: int, metric: str, value: Any,
               seconds: Any) -> str:
    """`t03 three_phase lr x3.496  epoch 4/8  val_accuracy 0.806  2.9s`."""
    shown = f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
    took = f"  {seconds:.1f}s" if isinstance(seconds, (int, float)) and math.isfinite(seconds) \
        else ""
    return f"{name}  epoch {epoch:>{len(str(epochs))}}/{epochs}  {metric} {shown}{took}"


class EpochLines(tune.Callback):
    """On the driver: one line per reported epoch of every trial. Names are padded to the
    longest name of the stage's trials so far, so the epochs and metrics line up."""

    def __init__(self, context: SweepContext, log: Callable[[str], None] = console.say) -> None:
        self.context, self.log = context, log
        self._names: dict[str, tuple[str, int]] = {}  # trial id -> (name, epochs)
        self._width = 0

    def _name(self, trial) -> tuple[str, int]:
        if trial.trial_id not in self._names:
            epochs = trial_config(trial.config, self.context).epochs
            self._names[trial.trial_id] = (
                run_name(trial.trial_id, trial.config, self.context), epochs)
        return self._names[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        """The first fold trial of a finalist starts: say which finalist and why now."""
        config = trial.config or {}
        if (not is_fold_trial(config) or int(config.get(FOLD_KEY, 0))
                or replicate_of(config)):
            return
        finalist = config[FINALIST_KEY]
        folds = int(config.get("cv_folds") or 0)
        searching = sum(1 for t in trials if not is_fold_trial(t.config or {})
                        and t.status in ("PENDING", "RUNNING", "PAUSED"))
        why = (f" (the {searching} search trial(s) still running cannot push it out of the "
               "finalists)" if searching else "")
        self.log(f"cross-validation: finalist {short_trial_name(finalist)} on {folds} folds"
                 f"{why}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" not in result:
            return
        for known in trials:
            self._width = max(self._width, len(self._name(known)[0]))
        name, epochs = self._name(trial)
        seconds = result.get(SECONDS_KEY, result.get("time_this_iter_s"))
        self.log(epoch_line(name.ljust(self._width), int(result["epoch"]), epochs,
                            self.context.metric, result.get(self.context.metric), seconds))


class ProgressTable(CLIReporter):
    """Tune's console output for a sweep, with --verbose only (the epoch lines show progress
    otherwise): while it runs, one line when trials have started or ended since the last one
    (at most every `every` s): trials per state and the best so far; at the end, Tune's table
    of every trial's searched values, task metric (best first) and epoch, nothing else. Tune
    passes the TuneConfig's metric and mode. The runner sets `RAY_AIR_NEW_OUTPUT=0`: Tune's
    newer output engine ignores a reporter."""

    def __init__(self, metric: str, parameters: list[str], every: float = 60.0) -> None:
        super().__init__(metric_columns={metric: metric, "epoch": "epoch"},
                         parameter_columns=parameters, sort_by_metric=True,
                         max_progress_rows=12, print_intermediate_tables=True)
        # own names: CLIReporter keeps Tune's metric and mode in _metric and _mode
        self._line_metric, self._line_parameters, self._every = metric, parameters, every
        self._maximise = True
        self._printed_at, self._printed_states = float("-inf"), ()

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        self._maximise = mode != "min"
        return super().set_search_properties(metric, mode)

    def should_report(self, trials, done: bool = False) -> bool:
        if not console.verbose():
            return False
        states = tuple(sorted(t.status for t in trials))
        due = time.monotonic() - self._printed_at >= self._every
        if done or (due and states != self._printed_states):
            self._printed_at, self._printed_states = time.monotonic(), states
            return True
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        if done:
            super().report(trials, done, *sys_info)
        else:
            print(status_line(trials, self._line_metric, self._maximise,
                              self._line_parameters), flush=True)


def status_line(trials, metric: str, maximise: bool, parameters: list[str]) -> str:
    """"trials: 2 RUNNING, 5 PENDING, 1 TERMINATED; best so far <id> (<params>) <metric> 0.806"."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    line = "trials: " + ", ".join(f"{n} {state}" for state, n in counts.items())
    scored = [t for t in trials if isinstance((t.last_result or {}).get(metric), (int, float))]
    if scored:
        best = (max if maximise else min)(scored, key=lambda t: t.last_result[metric])
        values = ", ".join(f"{k}={_short_value(best.config.get(k))}" for k in parameters)
        line += (f"; best so far {short_trial_name(best.trial_id)} ({values}) {metric} "
                 f"{best.last_result[metric]:.3f} at epoch {best.last_result.get('epoch', '?')}")
    return line


def _short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
