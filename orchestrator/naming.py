"""What a trial, a cross-validation retrain and an ensemble candidate are called, everywhere:
the console, the MLflow runs table, the leaderboard and the ensemble. Pure functions of ids and
configs, shared by the sweep and the ensemble so that neither imports the other for a name."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

STOPPED_EARLY = "stopped early (ASHA)"
# How a searched key shows in a trial's run name: a value alone where it names itself.
_NAME_FORMS = {"backbone": "{}", "schedule": "{}", "loss": "{}", "resolution": "{}px",
               "augment": "aug {}", "lr_multiplier": "lr x{}", "label_smoothing": "ls {}",
               "mixup_alpha": "mixup {}", "batch_size": "bs {}", "dropout": "dropout {}",
               "focal_gamma": "gamma {}", "weights": "{} weights"}


def short_trial_name(trial_id: str) -> str:
    """`f35f0_00003` -> `t03`: Tune's counter, which the console and the leaderboard show."""
    counter = trial_id.rsplit("_", 1)[-1]
    return f"t{int(counter):02d}" if counter.isdigit() else trial_id


def trial_run_name(trial_id: str, config: Mapping[str, Any], searched: Sequence[str]) -> str:
    """`t03 resnet50 224px three_phase lr x4.042`: the trial's number and what differs between
    trials (every searched key, floats to 4 significant digits), so names tell runs apart in
    the MLflow runs table."""
    parts = [short_trial_name(trial_id)]
    for key in searched:
        if key in config:
            value = config[key]
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(_NAME_FORMS.get(key, key + " {}").format(text))
    return " ".join(parts)


def cv_run_name(finalist_id: str, fold: int, folds: int, replicate: int = 0) -> str:
    """`cv t03 fold 2/3`: a cross-validation trial, by its finalist's number and its fold,
    counted from 1 (the tag `medsweep.fold` and the param `cv_fold` count from 0); an extra
    seed of the finalist (`--replicates`) is `cv t03 seed 2 fold 2/3`."""
    seed = f" seed {replicate + 1}" if replicate else ""
    return (f"cv {short_trial_name(finalist_id)}{seed} fold {fold + 1}"
            + (f"/{folds}" if folds else ""))


def cv_trial_name(finalist: str, replicate: int, fold: int) -> str:
    """`t03-f1` (`t03-r1-f1` for an extra seed): a cross-validation run's trial id as people
    read it, the same name the ensemble gives that fold's model (the fold counted from 0, as
    the tag `medsweep.fold`)."""
    return f"{candidate_name(short_trial_name(finalist), replicate)}-f{fold}"


def replicate_of(sampled: Mapping[str, Any]) -> int:
    """Which seed of its finalist a cross-validation trial trains (0: the finalist's own)."""
    return int(sampled.get("replicate", 0))


def replicate_seed(seed: int, replicate: int) -> int:
    """Replicate r trains with seed + 1000 r: far from any seed a search samples."""
    return seed + 1000 * replicate


def candidate_name(finalist: str, replicate: int) -> str:
    """How the ensemble calls one seed of a finalist: its trial id, `-r<k>` for extra seeds."""
    return finalist if replicate == 0 else f"{finalist}-r{replicate}"
