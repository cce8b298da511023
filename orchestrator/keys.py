"""Every MLflow tag key MedSweep writes or reads: the tags of its runs (the sweep, its trials,
the cross-validation runs, the ensemble), MLflow's own keys it sets, and the tags of a
registered model version (the model card's). Writers and readers import them from here, so a
renamed key cannot leave a reader behind; `tests/test_structure.py` keeps every tag-key literal
in this module. Pure names: importing this imports nothing, so the served model's card
(`serving/`) and the tracking package name the same keys."""
from __future__ import annotations

# --- run tags --------------------------------------------------------------------------------
TAG_KIND = "medsweep.kind"  # KIND_SWEEP | KIND_TRIAL | KIND_CV_TRIAL | KIND_ENSEMBLE
TAG_TRIAL_ID = "medsweep.trial_id"  # what people read: `t05`, a fold run `t05-f1`
TAG_TUNE_TRIAL_ID = "medsweep.tune_trial_id"  # Tune's `63832_00005`: finds the run again
TAG_STATUS = "medsweep.status"  # one of TRIAL_STATUSES
TAG_SYNTHETIC = "medsweep.synthetic_data"
TAG_TASK = "medsweep.task"
TAG_PROFILE = "medsweep.profile"
TAG_NODE = "medsweep.ray_node_id"  # where a trial's latest attempt ran
TAG_EPOCHS_RUN = "medsweep.epochs_run"
TAG_BEST_EPOCH = "medsweep.best_epoch"
TAG_CHECKPOINT = "medsweep.checkpoint"
TAG_FINALIST = "medsweep.finalist"  # a cross-validation run: the search trial it retrains
TAG_FOLD = "medsweep.fold"  # ... and the fold it holds out
TAG_REPLICATE = "medsweep.replicate"  # ... and which of its seeds (0: its own; --replicates)
TAG_PHASE = "medsweep.phase"  # a trial's unfreezing phase as it runs
TAG_STOPPED_BY = "medsweep.stopped_by"  # what stopped a trial early (ASHA)
# An ensemble run whose test figures have no interval (too few groups, zero width): why, in
# words, since the missing `_ci_low`/`_ci_high` metrics cannot say it themselves
TAG_INTERVAL_NOTE = "medsweep.interval_note"
# The sweep run's pointers to what it produced (its summary note)
TAG_BEST_TRIAL_RUN = "medsweep.best_trial_run"
TAG_ENSEMBLE_RUN = "medsweep.ensemble_run"
TAG_MODEL_VERSION = "medsweep.model_version"
# An external evaluation run (`python -m orchestrator.evaluate`): the version it evaluated, the
# ensemble run that logged it, the site's name and its data's fingerprint
TAG_EVALUATED_MODEL = "medsweep.evaluated_model"
TAG_EVALUATED_VERSION = "medsweep.evaluated_version"
TAG_EVALUATED_RUN = "medsweep.evaluated_run"
TAG_SITE = "medsweep.site"
TAG_DATA_FINGERPRINT = "medsweep.data_fingerprint"
TAG_TRANSPORT = "medsweep.transport"  # transported | did not transport | no verdict

# --- MLflow's own keys ---------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's or an experiment's description, Markdown
# An experiment tag holding a runs-table view (filter, order, columns) that the MLflow UI opens
# from a `viewStateShareKey=<key>` link: this prefix, then the key
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
DATASET_CONTEXT = "mlflow.data.context"  # a run input's role (training, evaluation, ...)

# --- model-version tags (the model card's, and promotion's) ----------------------------------
VERSION_TASK = "task"
VERSION_DATA_FINGERPRINT = "data_fingerprint"
VERSION_TEST_FINGERPRINT = "test_fingerprint"  # two versions compare only on the same cases
VERSION_SWEEP_RUN = "sweep_run"
VERSION_ENSEMBLE_RUN = "ensemble_run"
VERSION_SYNTHETIC = "synthetic_data"
VERSION_POSITIVE_CLASS = "positive_class"
VERSION_HEADS = "heads"
TAG_PROMOTION = "medsweep.promotion"  # "paired bootstrap" | "forced" | "first champion"
TAG_DIFFERENCE = "medsweep.promotion_difference"
TAG_OVER = "medsweep.promoted_over"


def version_metric_tag(metric: str) -> str:
    """The model-version tag holding a test figure with its interval, e.g. `test_pr_auc`."""
    return f"test_{metric}"


def version_external_tag(site: str) -> str:
    """The model-version tag holding one site's external figure, e.g. `external.site_b`."""
    return f"external.{site}"
