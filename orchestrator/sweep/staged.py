"""Both stages of a sweep in one Tune experiment: the search's trials, then the fold trials of
each finalist, queued the moment it is certain to be a finalist.

A finished search trial is certain to be among the `top` best when its rank among the finished
ones, plus the trials still running or not yet started, is at most `top`: none of those can push
it out. So the fold trials of the leading finalists start in the slots the search leaves idle at
its end (its last trials running, none left to start), on the trial processes it already
started, with no second Tuner between the stages. Once every search trial has ended, the
finalists are exactly `finalists()` of the whole search.

The search itself is unchanged: `StagedSearch` hands out the inner searcher's configurations
(random draws or Optuna's TPE, `search.py`) until the search's budget is drawn, tells the inner
searcher only of search trials, and saves and restores its state with Tune's (`--resume`).
`SearchOnlyASHA` keeps the fold trials out of ASHA's rungs: they always run every epoch.
"""
from __future__ import annotations

import copy
import math
import os
import pickle
import tempfile
import uuid
from typing import Any, Mapping, Sequence

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import SearchGenerator, Searcher

FINALIST_KEY = "finalist"  # a fold trial's config: the search trial id of its finalist
FOLD_KEY = "cv_fold"
REPLICATE_KEY = "replicate"
FOLD_TRIAL_KEYS = (FINALIST_KEY, REPLICATE_KEY)  # not training options: what a fold trial is


def is_fold_trial(config: Mapping[str, Any]) -> bool:
    return FINALIST_KEY in (config or {})


# ------------------------------------------------------------------------- pure ranking
def ranking_key(best: float, loss: float, mode: str) -> tuple[float, float]:
    """Better first: the best validation metric, ties broken by the lower validation loss."""
    return (-best if mode == "max" else best, loss)


def certain_finalists(ranked: Sequence[str], unfinished: int, top: int) -> list[str]:
    """Of the finished trials, best first, those sure to be among the `top` best whatever the
    `unfinished` ones reach: rank r (from 1) with r + unfinished <= top."""
    return list(ranked[:max(0, top - unfinished)])


def longest_first(seconds: Sequence[float]) -> list[int]:
    """Indices, longest first (ties: the earlier first): queued so, the short fold trials fill
    the slots that free up and the slots finish together (longest processing time first)."""
    return sorted(range(len(seconds)), key=lambda i: -seconds[i])


class _TrialRecord:
    """What the search needs to know of one search trial: its best figure so far (the epoch
    `finalists` would pick), the validation loss there, seconds per epoch, and how it ended."""

    __slots__ = ("best", "loss", "seconds_per_epoch", "config", "ended", "errored", "order")

    def __init__(self, config: dict, order: int) -> None:
        self.config, self.order = config, order
        self.best = self.loss = math.nan
        self.seconds_per_epoch = 0.0
        self.ended = self.errored = False


class StagedSearch(Searcher):
    """The search's `search_trials` configurations from `inner`, then `folds` x `replicates`
    fold trials for each of the `top` finalists, each finalist's queued once it is certain."""

    def __init__(self, inner: Searcher, *, search_trials: int, top: int, folds: int,
                 replicates: int, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.inner = inner
        self.search_trials, self.top, self.folds = search_trials, top if folds else 0, folds
        self.replicates = max(1, replicates)
        self.trials: dict[str, _TrialRecord] = {}  # search trial id -> its record
        self.queued: list[str] = []  # finalists whose fold trials were queued, in that order
        self.pending: list[dict] = []  # fold trial configs not yet handed to Tune

    @property
    def max_trials(self) -> int:
        """The Tuner's `num_samples`: every search trial and every possible fold trial."""
        return self.search_trials + self.top * self.folds * self.replicates

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    # --------------------------------------------------------------------------- suggest
    def suggest(self, trial_id: str):
        if len(self.trials) < self.search_trials:
            config = self.inner.suggest(trial_id)
            if config is None:
                return None
            if config == Searcher.FINISHED:  # the inner searcher ran out before the budget
                self.search_trials = len(self.trials)
            else:
                self.trials[trial_id] = _TrialRecord(dict(config), len(self.trials))
                return config
        self._queue_certain()
        if self.pending:
            return self.pending.pop(0)
        if len(self.queued) == self._finalist_count():
            return Searcher.FINISHED
        return None  # fold trials wait for finalists still being decided

    def _ranked(self) -> list[str]:
        done = [(ranking_key(r.best, r.loss, self.mode), r.order, tid)
                for tid, r in self.trials.items()
                if r.ended and not r.errored and not math.isnan(r.best)]
        return [tid for *_, tid in sorted(done)]

    def _unfinished(self) -> int:
        return self.search_trials - sum(1 for r in self.trials.values() if r.ended)

    def _finalist_count(self) -> int:
        """How many finalists the search will have: `top`, fewer once too few trials can."""
        if self._unfinished():
            return self.top
        return min(self.top, len(self._ranked()))

    def _queue_certain(self) -> None:
        certain = certain_finalists(self._ranked(), self._unfinished(), self.top)
        new = [tid for tid in certain if tid not in self.queued]
        # a fold trial runs its finalist's configured epochs, all of them (never stopped early)
        seconds = [self.trials[tid].seconds_per_epoch * int(self.trials[tid].config.get("epochs")
                                                            or 1) for tid in new]
        for index in longest_first(seconds):
            finalist = new[index]
            self.queued.append(finalist)
            base = {k: v for k, v in self.trials[finalist].config.items()
                    if k not in FOLD_TRIAL_KEYS}
            for replicate in range(self.replicates):
                for fold in range(self.folds):
                    self.pending.append({**base, FINALIST_KEY: finalist, FOLD_KEY: fold,
                                         **({REPLICATE_KEY: replicate}
                                            if self.replicates > 1 else {})})

    # --------------------------------------------------------------------------- results
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        record = self.trials.get(trial_id)
        if record is None:
            return
        value, epoch = result.get(self.metric), result.get("epoch")
        if isinstance(value, (int, float)) and not math.isnan(value):
            better = (value > record.best if self.mode == "max" else value < record.best)
            if math.isnan(record.best) or better:
                record.best = float(value)
                record.loss = float(result.get("val_loss", 0.0))
        if epoch and result.get("time_total_s"):
            record.seconds_per_epoch = float(result["time_total_s"]) / float(epoch)
        self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        record = self.trials.get(trial_id)
        if record is None:
            return  # a fold trial: nothing for the search to learn
        record.ended, record.errored = True, error
        self.inner.on_trial_complete(trial_id, result=result, error=error)

    # ------------------------------------------------------------------------ save, restore
    def save(self, checkpoint_path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            self.inner.save(inner_path)
            with open(inner_path, "rb") as file:
                inner = file.read()
        state = {k: v for k, v in self.__dict__.items() if k != "inner"}
        with open(checkpoint_path, "wb") as file:
            pickle.dump({"state": state, "inner": inner}, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            saved = pickle.load(file)
        self.__dict__.update(saved["state"])
        with tempfile.TemporaryDirectory() as tmp:
            inner_path = os.path.join(tmp, "inner.pkl")
            with open(inner_path, "wb") as file:
                file.write(saved["inner"])
            self.inner.restore(inner_path)


class SearchOnlyASHA(ASHAScheduler):
    """ASHA for the search's trials; fold trials pass it by, run every epoch, and never enter
    its rungs (their figures are on other folds, not the search's validation split)."""

    def on_trial_add(self, tune_controller, trial) -> None:
        if not is_fold_trial(trial.config):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        if is_fold_trial(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if not is_fold_trial(trial.config):
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if not is_fold_trial(trial.config):
            super().on_trial_remove(tune_controller, trial)


class NumberedTrials(SearchGenerator):
    """Tune's SearchGenerator around `StagedSearch`, its trial ids numbered as Tune's random
    search numbers them (`f35f0_00003`, which the console and MLflow show as `t03`) instead of
    random hex: trials keep their order in their names, the search's and the fold trials'."""

    def __init__(self, searcher: Searcher) -> None:
        super().__init__(searcher)
        self._prefix = uuid.uuid1().hex[:5] + "_"

    def create_trial_if_possible(self, experiment_spec: dict):
        from ray.tune.experiment.config_parser import _create_trial_from_spec
        from ray.tune.search.variant_generator import _resolve_nested_dict, format_vars
        from ray.tune.utils.util import flatten_dict, merge_dicts

        trial_id = f"{self._prefix}{self._counter:05d}"
        suggested = self.searcher.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            self._finished = True
            return None
        if suggested is None:
            return None
        spec = copy.deepcopy(experiment_spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(suggested))
        self._counter += 1
        tag = f"{self._counter}_{format_vars(_resolve_nested_dict(spec['config']))}"
        return _create_trial_from_spec(spec, self._parser,
                                       evaluated_params=flatten_dict(suggested),
                                       experiment_tag=tag, trial_id=trial_id)

    def get_state(self) -> dict:
        return {**super().get_state(), "prefix": self._prefix}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._prefix = state.get("prefix", self._prefix)
