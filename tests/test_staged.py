"""One experiment for both stages (`orchestrator/sweep/staged.py`): the fold trials of a
finalist are queued the moment no unfinished search trial can push it out of the `top`, never
before; once the search has ended the finalists are the `top` best; the state survives a
save and restore; random draws replay after a restore."""
from __future__ import annotations

import pytest
from ray import tune
from ray.tune.search import Searcher

from orchestrator.sweep.search import RandomDraws
from orchestrator.sweep.staged import (FINALIST_KEY, FOLD_KEY, StagedSearch, certain_finalists,
                                       is_fold_trial, longest_first)


class Listed(Searcher):
    """A real Tune Searcher handing out the given configs in order, learning nothing."""

    def __init__(self, configs: list[dict]) -> None:
        super().__init__()
        self.configs, self.handed = list(configs), 0

    def suggest(self, trial_id):
        if self.handed == len(self.configs):
            return Searcher.FINISHED
        self.handed += 1
        return dict(self.configs[self.handed - 1])

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass

    def save(self, checkpoint_path):
        with open(checkpoint_path, "w") as file:
            file.write(str(self.handed))

    def restore(self, checkpoint_path):
        with open(checkpoint_path) as file:
            self.handed = int(file.read())


def _search(n: int = 4, top: int = 2, folds: int = 2, replicates: int = 1) -> StagedSearch:
    configs = [{"lr": i, "epochs": 4 + i, "seed": 0} for i in range(n)]
    return StagedSearch(Listed(configs), search_trials=n, top=top, folds=folds,
                        replicates=replicates, metric="val_accuracy", mode="max")


def _finish(search: StagedSearch, trial_id: str, accuracy: float, loss: float = 1.0,
            seconds_per_epoch: float = 1.0, error: bool = False) -> None:
    search.on_trial_result(trial_id, {"val_accuracy": accuracy, "val_loss": loss, "epoch": 2,
                                      "time_total_s": 2 * seconds_per_epoch})
    search.on_trial_complete(trial_id, error=error)


def _drain(search: StagedSearch, prefix: str) -> list[dict]:
    out, n = [], 0
    while True:
        config = search.suggest(f"{prefix}{n}")
        n += 1
        if config is None or config == Searcher.FINISHED:
            return out
        out.append(config)


def test_a_finalist_is_certain_when_its_rank_plus_the_unfinished_is_within_top():
    assert certain_finalists(["a", "b", "c"], unfinished=1, top=2) == ["a"]
    assert certain_finalists(["a", "b", "c"], unfinished=0, top=2) == ["a", "b"]
    assert certain_finalists(["a"], unfinished=2, top=2) == []
    assert longest_first([20.0, 31.5, 20.0, 8.0]) == [1, 0, 2, 3]  # ties: the earlier first


def test_fold_trials_start_for_certain_finalists_while_the_search_still_runs():
    search = _search()
    configs = [search.suggest(f"s{i}") for i in range(4)]
    assert [c["lr"] for c in configs] == [0, 1, 2, 3] and not any(map(is_fold_trial, configs))
    assert search.suggest("x") is None  # the search is drawn; no finalist is known yet
    _finish(search, "s0", 0.9)
    _finish(search, "s1", 0.5)
    assert search.suggest("x") is None  # 2 trials left could still both beat s0
    _finish(search, "s2", 0.7)  # s0 leads, 1 trial left: s0 is in the top 2 whatever it does
    early = _drain(search, "f")
    assert [(c[FINALIST_KEY], c[FOLD_KEY]) for c in early] == [("s0", 0), ("s0", 1)]
    assert early[0]["lr"] == 0 and early[0]["epochs"] == 4  # the finalist's own config
    _finish(search, "s3", 0.95, seconds_per_epoch=3.0)  # overtakes s0, which stays a finalist
    late = _drain(search, "g")
    assert [(c[FINALIST_KEY], c[FOLD_KEY]) for c in late] == [("s3", 0), ("s3", 1)]
    assert search.suggest("y") == Searcher.FINISHED  # 2 finalists x 2 folds queued, no more
    assert search.queued == ["s0", "s3"] and search.max_trials == 4 + 2 * 2


def test_ties_go_to_the_lower_loss_and_errored_or_silent_trials_never_qualify():
    search = _search(n=4, top=2, folds=3)
    for i in range(4):
        search.suggest(f"s{i}")
    _finish(search, "s0", 0.8, loss=0.9)
    _finish(search, "s1", 0.8, loss=0.4)
    _finish(search, "s2", 0.99, error=True)
    search.on_trial_complete("s3")  # ended without a single result
    folds = _drain(search, "f")
    assert [c[FINALIST_KEY] for c in folds[::3]] == ["s1", "s0"]  # equal metric: lower loss
    assert search.suggest("y") == Searcher.FINISHED


def test_finalists_decided_together_are_queued_longest_first_with_every_seed():
    search = _search(n=3, top=2, folds=2, replicates=2)
    for i in range(3):
        search.suggest(f"s{i}")
    _finish(search, "s0", 0.9, seconds_per_epoch=1.0)  # 4 epochs x 1 s
    _finish(search, "s1", 0.8, seconds_per_epoch=5.0)  # 5 epochs x 5 s: the longer
    _finish(search, "s2", 0.1)
    cells = [(c[FINALIST_KEY], c.get("replicate", 0), c[FOLD_KEY]) for c in _drain(search, "f")]
    assert cells == [("s1", r, k) for r in range(2) for k in range(2)] + \
        [("s0", r, k) for r in range(2) for k in range(2)]


def test_without_folds_the_search_is_all_there_is():
    search = _search(n=2, folds=0)
    assert search.max_trials == 2
    search.suggest("s0"), search.suggest("s1")
    _finish(search, "s0", 0.9), _finish(search, "s1", 0.8)
    assert search.suggest("x") == Searcher.FINISHED


def test_the_state_survives_a_save_and_restore_mid_search(tmp_path):
    search = _search()
    for i in range(4):
        search.suggest(f"s{i}")
    _finish(search, "s0", 0.9), _finish(search, "s1", 0.5), _finish(search, "s2", 0.7)
    assert len(_drain(search, "f")) == 2
    search.save(str(tmp_path / "state.pkl"))
    again = _search()
    again.restore(str(tmp_path / "state.pkl"))
    assert again.inner.handed == 4 and again.queued == ["s0"]
    _finish(again, "s3", 0.1)
    assert [c[FINALIST_KEY] for c in _drain(again, "g")] == ["s2", "s2"]  # s0's not again


def test_random_draws_are_seeded_enumerate_a_grid_and_replay_after_a_restore(tmp_path):
    space = {"lr": tune.loguniform(1e-4, 1e-1), "schedule": tune.grid_search(["a", "b"]),
             "double": tune.sample_from(lambda spec: spec.config.lr * 2)}

    def drawn(searcher: RandomDraws, n: int) -> list[dict]:
        return [searcher.suggest(str(i)) for i in range(n)]

    first = drawn(RandomDraws(space, seed=3, draws=3), 6)
    assert first == drawn(RandomDraws(space, seed=3, draws=3), 6)
    assert first != drawn(RandomDraws(space, seed=4, draws=3), 6)
    assert [c["schedule"] for c in first] == ["a", "b"] * 3
    assert all(c["double"] == pytest.approx(2 * c["lr"]) for c in first)
    searcher = RandomDraws(space, seed=3, draws=3)
    drawn(searcher, 4)
    searcher.save(str(tmp_path / "random.pkl"))
    restored = RandomDraws({}, seed=0, draws=0)
    restored.restore(str(tmp_path / "random.pkl"))
    assert drawn(restored, 2) == first[4:]
    assert restored.suggest("x") == Searcher.FINISHED


def test_random_draws_are_what_tunes_own_random_search_draws():
    """The `cpu` profile's space: the same 8 configurations, in order, as Tune's
    BasicVariantGenerator with the same seed (what sweeps drew before the two stages shared
    one experiment)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search_spaces import get_profile

    space = dict(get_profile("brain", "cpu").space)
    tunes = BasicVariantGenerator(random_state=0)
    tunes.add_configurations(Experiment("x", lambda config: None, config=space, num_samples=8))
    expected = []
    while (trial := tunes.next_trial()) is not None:
        expected.append(trial.config)
    ours = RandomDraws(space, seed=0, draws=8)
    assert len(expected) == 8 and [ours.suggest(str(i)) for i in range(8)] == expected
