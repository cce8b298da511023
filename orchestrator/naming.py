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


# --- one-line run descriptions ----------------------------------------------------------------
# What the MLflow UI shows on a trial's, a cross-validation run's and the ensemble's page (the
# tag `mlflow.note.content`): what the run is and its figure, rounded to 3 decimals for the
# reader (the logged metrics keep full precision).
DIGITS = 3


def _best(metric: str, best: tuple[float, int] | None) -> str:
    if best is None or best[0] != best[0]:
        return f"no {metric} reported"
    return f"best {metric} {best[0]:.{DIGITS}f} at epoch {best[1]}"


def trial_description(trial_id: str, metric: str, best: tuple[float, int] | None,
                      epochs_run: int, max_epochs: int, outcome: str) -> str:
    """`Search trial t05: best val_accuracy 0.806 at epoch 5; stopped early by ASHA after
    epoch 4 of 8.` `outcome`: completed | stopped_early | errored."""
    ended = {"completed": f"ran all {max_epochs} epochs",
             "stopped_early": f"stopped early by ASHA after epoch {epochs_run} of {max_epochs}",
             "errored": f"failed after epoch {epochs_run} of {max_epochs}"}[outcome]
    return f"Search trial {short_trial_name(trial_id)}: {_best(metric, best)}; {ended}."


def cv_description(finalist: str, replicate: int, fold: int, folds: int, metric: str,
                   best: tuple[float, int] | None, outcome: str) -> str:
    """`Cross-validation of finalist t03: trained with fold 2 of 3 held out; best val_accuracy
    on that fold 0.863 at epoch 8.` The ensemble is chosen on these out-of-fold predictions."""
    seed = f" (seed {replicate + 1})" if replicate else ""
    ended = "" if outcome == "completed" else f" ({outcome})"
    return (f"Cross-validation of finalist {short_trial_name(finalist)}{seed}: trained with "
            f"fold {fold + 1} of {folds} held out{ended}; {_best(metric, best)} on that fold. "
            "The ensemble is chosen on these out-of-fold predictions.")


def ensemble_description(members: Sequence[str], weights: Sequence[float], policy: str,
                         chosen_on: str, test_figure: str, registered: tuple[str, str] | None,
                         ) -> str:
    """`Final ensemble: t03 x0.62 + t01 x0.38, TTA policy light, chosen on out-of-fold
    predictions; test accuracy 0.778 [0.651, 0.872]; registered as medsweep-brain version 3.`
    `test_figure` is already worded (`accuracy 0.778 [0.651, 0.872]`)."""
    parts = " + ".join(f"{m} x{w:.2f}" for m, w in zip(members, weights))
    text = (f"Final ensemble: {parts}, TTA policy `{policy}`, chosen on {chosen_on} "
            f"predictions; test {test_figure}")
    if registered:
        name, version = registered
        text += (f"; registered as [{name} version {version}](#/models/{name}/versions/"
                 f"{version}) (its description is the model card)")
    return text + "."
