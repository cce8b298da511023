"""How the search picks each trial's configuration: random draws, or Optuna's TPE.

Random sampling spends a GPU budget evenly over the whole space; TPE (a Tree-structured Parzen
Estimator) models which values did well and draws more like them, once it has seen enough
trials. Below `MIN_TPE_TRIALS` it has seen too few to model anything and would only be random
sampling with extra steps, so the default (`default_search`) is TPE from that budget up (the
`gpu` profile) and random below it (`cpu`, `smoke`); `--search` chooses either way.

TPE gets the space define-by-run: every Tune domain becomes the matching Optuna suggestion, a
grid becomes a categorical (TPE draws trials one by one, so the grid's points are values to
learn about, not a product to enumerate), and `tune.sample_from` entries (a value that depends
on others, e.g. a schedule's own option) are computed from the suggested ones, so conditional
values work. The searcher's state is saved with the Tune experiment, so `--resume` continues
from its history instead of drawing the same first trials again.
"""
from __future__ import annotations

from types import SimpleNamespace
import itertools
from typing import Any, Iterator, Mapping

from ray.tune.search import sample as _sample
from ray.tune.search import Searcher

from orchestrator.errors import ConfigError
from search_spaces import is_grid
from search_spaces._common import grid_values

SEARCHES = ("random", "tpe")
TPE_STARTUP = 8  # random trials TPE draws before it models anything
MIN_TPE_TRIALS = 2 * TPE_STARTUP  # the default turns to TPE from this many trials


def default_search(trials: int) -> str:
    """`tpe` when the budget leaves TPE at least as many modelled trials as random ones."""
    return "tpe" if trials >= MIN_TPE_TRIALS else "random"


def check_search(name: str | None, trials: int) -> str:
    """The search to run: `name`, or the default for this many trials."""
    if name is None:
        return default_search(trials)
    if name not in SEARCHES:
        raise ConfigError(f"unknown --search {name!r}; valid: {', '.join(SEARCHES)}")
    return name


def make_search(name: str, space: Mapping[str, Any], *, seed: int, trials: int, metric: str,
                mode: str) -> tuple[Searcher, int]:
    """(the searcher, how many configurations it draws) for one search; it draws every one
    itself (the Tuner's `param_space` stays empty).

    Random keeps Tune's own sampling of the space (a grid is enumerated, `trials // grid`
    draws of each point); TPE takes the whole space itself and draws `trials` one by one,
    learning from each trial's last `metric` (a trial ASHA stopped early counts with the figure
    it stopped at)."""
    if name == "random":
        grid = 1
        for value in space.values():
            grid *= len(grid_values(value)) if is_grid(value) else 1
        draws = max(1, trials // grid)
        return RandomDraws(space, seed=seed, draws=draws), draws * grid
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial on the console
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP)
    searcher = OptunaSearch(space=DefineByRun(space), metric=metric, mode=mode,
                            sampler=sampler)
    return searcher, trials


class RandomDraws(Searcher):
    """Tune's own random sampling as a Searcher, draw for draw what its BasicVariantGenerator
    gives for the same seed: `draws` samples of the space, a grid enumerated within each.
    A Searcher, so that `staged.StagedSearch` can follow it with the fold trials. Its state
    is the seed and how many configurations it handed out (replayed on `--resume`)."""

    def __init__(self, space: Mapping[str, Any], *, seed: int, draws: int) -> None:
        super().__init__()
        self.space, self.seed, self.draws, self.handed = dict(space), seed, draws, 0
        self._configs: Iterator[dict] | None = None

    def _all_configs(self) -> Iterator[dict]:
        from ray.tune.search.basic_variant import _BackwardsCompatibleNumpyRng
        from ray.tune.search.variant_generator import generate_variants

        rng = _BackwardsCompatibleNumpyRng(self.seed)
        for _ in range(self.draws):  # each draw's grid points at once, as Tune draws them
            for _, spec in list(generate_variants({"config": self.space}, random_state=rng)):
                yield spec["config"]

    def suggest(self, trial_id: str):
        if self._configs is None:
            self._configs = itertools.islice(self._all_configs(), self.handed, None)
        config = next(self._configs, None)
        if config is None:
            return Searcher.FINISHED
        self.handed += 1
        return config

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        """Random draws learn nothing from a trial."""

    def save(self, checkpoint_path: str) -> None:
        import cloudpickle

        with open(checkpoint_path, "wb") as file:  # the space may hold `sample_from` lambdas
            cloudpickle.dump({"space": self.space, "seed": self.seed, "draws": self.draws,
                              "handed": self.handed}, file)

    def restore(self, checkpoint_path: str) -> None:
        import cloudpickle

        with open(checkpoint_path, "rb") as file:
            state = cloudpickle.load(file)
        self.space, self.seed, self.draws, self.handed = (
            state["space"], state["seed"], state["draws"], state["handed"])
        self._configs = None

    def __getstate__(self) -> dict:
        import cloudpickle

        return {**{k: v for k, v in self.__dict__.items() if k not in ("_configs", "space")},
                "_configs": None, "space_pickled": cloudpickle.dumps(self.space)}

    def __setstate__(self, state: dict) -> None:
        import cloudpickle

        state = dict(state)
        state["space"] = cloudpickle.loads(state.pop("space_pickled"))
        self.__dict__.update(state)


class DefineByRun:
    """The space as an Optuna define-by-run function: suggested values are recorded on the
    Optuna trial, constants and `sample_from` values are returned (Tune adds them to the
    config). It travels in the searcher's saved state (`--resume`), through cloudpickle, so a
    `sample_from` lambda survives the save."""

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.space = dict(space)
        for key, value in self.space.items():
            _check_supported(key, value)

    def __getstate__(self) -> dict:
        import cloudpickle

        return {"space": cloudpickle.dumps(self.space)}

    def __setstate__(self, state: dict) -> None:
        import cloudpickle

        self.space = cloudpickle.loads(state["space"])

    def __call__(self, trial) -> dict:
        config: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for key, value in self.space.items():
            if is_grid(value) or isinstance(value, _sample.Categorical):
                choices = grid_values(value) if is_grid(value) else list(value.categories)
                if all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                    config[key] = trial.suggest_categorical(key, choices)
                else:  # Optuna stores plain values only: it learns the index, Tune gets the value
                    config[key] = fixed[key] = choices[trial.suggest_categorical(
                        key, list(range(len(choices))))]
            elif isinstance(value, (_sample.Float, _sample.Integer)):
                config[key] = _suggest_number(trial, key, value)
            elif not isinstance(value, _sample.Domain):
                config[key] = fixed[key] = value
        for key, value in self.space.items():
            if isinstance(value, _sample.Function):  # conditional: sees the values drawn
                spec = SimpleNamespace(config=SimpleNamespace(**config))
                config[key] = fixed[key] = value.func(spec)
        return fixed


def _suggest_number(trial, key: str, value) -> Any:
    sampler = value.get_sampler()
    step = getattr(sampler, "q", None)
    inner = getattr(sampler, "sampler", sampler)  # a quantized range wraps its own
    log = isinstance(inner, _sample.LogUniform)
    steps = {"step": step} if step and not log else {}
    if isinstance(value, _sample.Integer):  # Tune's upper bound is exclusive
        return trial.suggest_int(key, value.lower, value.upper - 1, log=log,
                                 **{k: int(v) for k, v in steps.items()})
    return trial.suggest_float(key, value.lower, value.upper, log=log,
                               **{k: float(v) for k, v in steps.items()})


def _check_supported(key: str, value: Any) -> None:
    """Refuse, on the driver, a domain TPE cannot draw (a normal distribution, say)."""
    if not isinstance(value, _sample.Domain) or is_grid(value):
        return
    if isinstance(value, (_sample.Categorical, _sample.Function)):
        return
    sampler = value.get_sampler()
    inner = getattr(sampler, "sampler", sampler)
    if isinstance(inner, (_sample.Uniform, _sample.LogUniform)):
        return
    raise ConfigError(f"--search tpe cannot draw {key} ({type(inner).__name__}); use a "
                      "choice, a (log)uniform range or --search random")
