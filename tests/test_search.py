"""The search: random draws or Optuna's TPE, the default by budget, the space define-by-run
(grids, non-plain choices, conditional values), and a TPE sweep that resumes from its history (killed and resumed in tests/test_sweep.py,
with the other kill/resume paths)."""
from __future__ import annotations

import pickle

import optuna
import pytest
from ray import tune

from orchestrator.errors import ConfigError
from orchestrator.sweep.search import (MIN_TPE_TRIALS, DefineByRun, check_search,
                                       default_search, make_search)
from search_spaces import get_profile

SPACE = {"schedule": tune.choice(["full", "three_phase"]),
         "resolution": tune.grid_search([64, 128]),
         "lr_multiplier": tune.loguniform(0.3, 3.0),
         "batch_size": tune.qrandint(8, 64, 8),
         "head": tune.choice([[1, 2], [3]]),  # not a plain value: Optuna learns its index
         "epochs": 4,
         # conditional: a value that depends on another drawn value
         "phases": tune.sample_from(lambda spec: 3 if spec.config.schedule == "three_phase"
                                    else 1)}


def _draws(define, n: int, seed: int) -> list[dict]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed,
                                                                  n_startup_trials=2))
    configs = []
    for i in range(n):
        trial = study.ask()
        fixed = define(trial)
        configs.append({**trial.params, **fixed})
        study.tell(trial, float(configs[-1]["lr_multiplier"]))  # TPE learns: small lr is good
    return configs


def test_the_default_is_tpe_only_where_the_budget_lets_it_learn():
    assert default_search(MIN_TPE_TRIALS - 1) == "random"
    assert default_search(MIN_TPE_TRIALS) == "tpe"
    assert check_search(None, get_profile("brain", "gpu").trials) == "tpe"
    assert check_search(None, get_profile("brain", "cpu").trials) == "random"
    assert check_search("random", 100) == "random"
    with pytest.raises(ConfigError, match="unknown --search 'bayes'; valid: random, tpe"):
        check_search("bayes", 10)


def test_define_by_run_draws_every_kind_of_entry_within_its_domain():
    configs = _draws(DefineByRun(SPACE), 12, seed=0)
    for config in configs:
        assert config["schedule"] in ("full", "three_phase")
        assert config["resolution"] in (64, 128)  # a grid is a categorical under TPE
        assert 0.3 <= config["lr_multiplier"] <= 3.0
        assert config["batch_size"] in range(8, 65, 8)
        assert config["head"] in ([1, 2], [3]) and config["epochs"] == 4
        assert config["phases"] == (3 if config["schedule"] == "three_phase" else 1)
    assert configs == _draws(DefineByRun(SPACE), 12, seed=0)  # the seed fixes the search
    assert configs != _draws(DefineByRun(SPACE), 12, seed=1)
    # it learns: after its start-up draws it favours what scored best (here, small lr)
    late = sorted(c["lr_multiplier"] for c in configs[6:])
    assert late[len(late) // 2] < 1.0


def test_the_space_survives_the_searchers_save_with_its_lambdas():
    define = pickle.loads(pickle.dumps(DefineByRun(SPACE)))
    assert _draws(define, 4, seed=3) == _draws(DefineByRun(SPACE), 4, seed=3)


def test_tpe_takes_the_whole_budget_and_refuses_what_it_cannot_draw():
    _, draws = make_search("tpe", SPACE, seed=0, trials=32, metric="val_accuracy", mode="max")
    assert draws == 32  # the grid's points are drawn, not enumerated
    searcher, draws = make_search("random", SPACE, seed=0, trials=32, metric="val_accuracy",
                                  mode="max")
    assert draws == 32 and searcher.draws == 16  # 16 per grid point, both points
    with pytest.raises(ConfigError, match="--search tpe cannot draw noise"):
        DefineByRun({"noise": tune.randn(0, 1)})
