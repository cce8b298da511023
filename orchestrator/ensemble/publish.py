"""Publish the chosen ensemble: its serving spec (temperature, threshold, refer cut chosen on
held-out predictions; per head for a multi-head task), the test predictions promotion compares,
the logged pyfunc model, the check that the logged model answers exactly as the in-process
ensemble, and the registered version with its card and tags."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator import tracking
from orchestrator.clinical.bootstrap import note_lines, row_note
from orchestrator.data.splits import read_manifest, split_fingerprint
from orchestrator.console import detail
from orchestrator.ensemble.artifacts import TEST_PREDICTIONS
from orchestrator.errors import ConfigError
from orchestrator.serving import contract, inputs
from orchestrator.serving.card import CardFacts, Interval, card_tags, model_card

Log = Callable[[str], None]
CHECK_TOLERANCE = 1e-5  # largest allowed |served - in-process| probability; a regression
# head's value: relative to its size when above 1 (float32 spacing at 1000 mm is 6e-5)
CHECK_BATCH = 64


class ServedModelMismatch(ConfigError):
    """The logged model does not answer as the ensemble that was evaluated: not registered."""


def serving_spec(task, clinical_result, held_kind: str) -> contract.ServingSpec:
    """Every head's own fit: a classification head's temperature and refer cut (a single-label
    binary task's threshold too), a regression head's unit."""
    from orchestrator.clinical.evaluated import evaluated_heads

    fits = clinical_result.fits
    heads = []
    for eh in evaluated_heads(task):
        head, fit = eh.head, fits[eh.head.name]
        if not head.is_classification:
            heads.append(contract.HeadSpec(head.name, head.kind, unit=head.unit))
            continue
        op = fit.operating_point
        heads.append(contract.HeadSpec(
            head.name, head.kind, classes=tuple(head.classes), unit=head.unit,
            temperature=float(fit.temperature), refer_cut=float(fit.referral.cut),
            target_accuracy=float(fit.referral.target_accuracy),
            held_out_coverage=float(fit.referral.coverage),
            refer_level=float(fit.referral.confidence_level),
            refer_lower_bound=(None if fit.referral.refers_everything
                               else float(fit.referral.lower_bound)),
            held_out_cases=int(fit.referral.cases),
            threshold=float(op.threshold) if op is not None else None,
            positive_class=head.classes[eh.positive] if eh.positive is not None else None,
            named=eh.named, sets=fit.sets, group_rule=fit.group_rule))
    return contract.ServingSpec.of_heads(heads, chosen_on=held_kind)


def truth_columns(task, y_test: np.ndarray) -> dict[str, list]:
    """The test truth, a column per head: a single-label task's `label`, a multi-head task's
    `<head>_true` each (a class name or a value in the head's unit)."""
    from orchestrator.clinical.evaluated import evaluated_heads

    return {eh.truth_column: eh.truth(y_test) for eh in evaluated_heads(task)}


def test_predictions(prepared, recorded: pd.DataFrame, y_test: np.ndarray,
                     served: pd.DataFrame) -> pd.DataFrame:
    """One row per test image: where it is (relative to the data root), its content hash (from
    the `recorded` manifest), group and label (a multi-head task: `<head>_true` per head), and
    the served answer. What `promote` pairs between two models."""
    hashes = dict(zip(recorded["path"], recorded["hash"]))
    rows = prepared.table[prepared.table["split"] == "test"]
    task = prepared.task
    labels = truth_columns(task, y_test)
    frame = pd.DataFrame({
        "path": [Path(os.path.relpath(p, prepared.root)).as_posix() for p in rows["path"]],
        "hash": [hashes[p] for p in rows["path"]], "group": rows["group"].to_numpy(),
        **labels})
    return pd.concat([frame, served.reset_index(drop=True)], axis=1)


def _compared(spec: contract.ServingSpec) -> tuple[list[str], list[tuple[list[str], Callable]]]:
    """The columns that must match within CHECK_TOLERANCE (every probability, confidence and
    value), and each classification head's decision columns that must match exactly, with the
    cases where they may differ (a probability on the threshold, a confidence on the cut)."""
    numbers = [c for c, kind in contract.output_columns(spec) if kind == "double"]
    decisions = [([h.column(contract.DECISION), h.column(contract.REFER)],
                  lambda want, h=h: _near_a_cut(h, want))
                 for h in spec.answered_heads if h.is_classification]
    decisions += [([h.column(contract.PREDICTION_SET), h.column(contract.SET_SIZE)],
                   lambda want, h=h: _near_a_quantile(h, want))
                  for h in spec.answered_heads if h.is_classification and h.sets is not None]
    if spec.ood is not None:  # the flag, and a refer it sets, may differ only next to its cut
        decisions = [(columns, lambda want, near=near: near(want) | _near_ood_cut(spec, want))
                     for columns, near in decisions]
        decisions.append(([contract.OUT_OF_DISTRIBUTION],
                          lambda want: _near_ood_cut(spec, want)))
    return numbers, decisions


def _near_ood_cut(spec: contract.ServingSpec, want: pd.DataFrame) -> np.ndarray:
    """An OOD score within the check's tolerance of the cut (relative, as a value's)."""
    score = want[contract.OOD_SCORE].to_numpy(np.float64)
    return np.abs(score - spec.ood.cut) <= CHECK_TOLERANCE * np.maximum(1.0, np.abs(score))


def _near_a_quantile(head: contract.HeadSpec, want: pd.DataFrame) -> np.ndarray:
    """Where a set may differ: some class's probability mass above it (a sum of up to C
    probabilities, each within CHECK_TOLERANCE) sits that close to its quantile."""
    from orchestrator.clinical.conformal import near_quantile

    probs = want[[head.column(c) for c in contract.probability_columns(head.classes)]]
    return near_quantile(probs.to_numpy(np.float64), head.sets,
                         CHECK_TOLERANCE * len(head.classes))


def _near_a_cut(head: contract.HeadSpec, want: pd.DataFrame) -> np.ndarray:
    close = (np.abs(want[head.column(contract.CONFIDENCE)] - head.refer_cut).to_numpy()
             <= CHECK_TOLERANCE)
    if head.threshold is not None:
        positive = head.column(f"{contract.PROBABILITY_PREFIX}{head.positive_class}")
        close |= np.abs(want[positive] - head.threshold).to_numpy() <= CHECK_TOLERANCE
    return close


def check_served(model, paths: Sequence[str], expected: pd.DataFrame,
                 spec: contract.ServingSpec, log: Log) -> float:
    """Send every test image's file bytes (what a REST client sends, after base64) through the
    logged model; its answer must equal the in-process one: every probability, confidence and
    (multi-head) value within CHECK_TOLERANCE (a value's relative to its size above 1), every
    decision, refer flag, prediction set and set size exactly (except where a probability sits
    on its threshold, cut or set quantile). Returns the largest difference."""
    cols, decisions = _compared(spec)
    value_columns = {h.column(contract.VALUE) for h in spec.answered_heads
                     if not h.is_classification}
    if spec.ood is not None:  # a distance: compared relative to its size above 1
        value_columns.add(contract.OOD_SCORE)
    values = np.array([c in value_columns for c in cols])
    worst = 0.0
    for start in range(0, len(paths), CHECK_BATCH):
        chunk = paths[start:start + CHECK_BATCH]
        served = model.predict(pd.DataFrame({inputs.IMAGE: [Path(p).read_bytes()
                                                              for p in chunk]}))
        want = expected.iloc[start:start + CHECK_BATCH].reset_index(drop=True)
        gap = np.abs(served[cols].to_numpy(np.float64) - want[cols].to_numpy(np.float64))
        if values.any():
            gap[:, values] /= np.maximum(1.0, np.abs(want[cols].to_numpy(np.float64)[:, values]))
        diff = float(np.max(gap))
        worst = max(worst, diff)
        # a decision may differ only where the probability sits on the threshold or cut
        for columns, near in decisions:
            close = near(want)
            for column in columns:
                differs = (served[column].to_numpy() != want[column].to_numpy()) & ~close
                if differs.any():
                    bad = chunk[int(np.flatnonzero(differs)[0])]
                    raise ServedModelMismatch(f"the logged model's `{column}` differs from the "
                                              f"evaluated ensemble's on {bad}; not registered")
    if not worst <= CHECK_TOLERANCE:
        what = "probabilities and values" if value_columns else "probabilities"
        raise ServedModelMismatch(f"the logged model's {what} differ from the evaluated "
                                  f"ensemble's by up to {worst:.2e} on the test images (allowed "
                                  f"{CHECK_TOLERANCE:.0e}); not registered")
    detail(log, f"served-model check: {len(paths)} test images sent as encoded files answer "
                f"as the evaluated ensemble (max |difference| {worst:.1e})")
    return worst


def card_facts(sweep, task, prepared, recorded: pd.DataFrame, meta: dict, held, choice,
               transforms, table: pd.DataFrame, intervals: pd.DataFrame,
               spec: contract.ServingSpec, run_id: str, checklist=None) -> CardFacts:
    ens = choice.ensemble
    row = table.set_index("model").loc["ensemble"]
    shown = (_multihead_shown(task) if task.is_multihead else
             ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss",
              "sensitivity_at_threshold", "specificity_at_threshold",
              "coverage_at_refer_cut", "accuracy_accepted_at_refer_cut", "set_coverage",
              "set_size_mean", "ece", "ece_calibrated"))
    test = intervals[intervals.model == "ensemble"].set_index("metric")
    return CardFacts(
        task=task.key, metric=task.metric, data_fingerprint=meta["fingerprint"],
        test_fingerprint=split_fingerprint(recorded, "test"), synthetic=sweep.synthetic,
        split_counts={str(k): int(v) for k, v in prepared.table["split"].value_counts().items()},
        members=[(m, w, held.models[m][0].resolution, len(held.models[m]))
                 for m, w in zip(ens.members, ens.weights)],
        tta_policy=choice.policy, tta_transforms=len(transforms),
        held_out={k[4:]: float(v) for k, v in row.items()
                  if k.startswith("val_") and isinstance(v, (int, float))},
        test={m: Interval(float(test.loc[m, "point"]), float(test.loc[m, "low"]),
                          float(test.loc[m, "high"]), row_note(test.loc[m]))
              for m in shown if m in test.index},
        spec=spec, sweep_run_id=sweep.parent_run_id, ensemble_run_id=run_id,
        data_notes=sweep.data_notes, checklist=checklist,
        interval_notes=note_lines(test.loc[[m for m in shown if m in test.index]]
                                  .reset_index()))


def _multihead_shown(task) -> tuple[str, ...]:
    """The card's figures of a multi-head ensemble: over all heads, then each head's."""
    per_head = {"classification": ("balanced_accuracy", "accuracy", "macro_f1", "loss", "skill",
                                   "ece_calibrated", "coverage_at_refer_cut",
                                   "accuracy_accepted_at_refer_cut", "set_coverage",
                                   "set_size_mean"),
                "regression": ("mae", "rmse", "r2", "skill")}
    return ("mean_skill", "loss", *(f"{h.name}_{m}" for h in task.heads for m in per_head[h.kind]))


def publish(sweep, task, spec_base: dict, parts, work: Path, clinical_result, prepared,
            y_test: np.ndarray, raw_test: np.ndarray, facts_args: dict, run_id: str,
            log: Log, ood_fit=None) -> tuple[str, str, str]:
    """Log, check and register; returns (model URI, registered name, version). `ood_fit`
    (`ensemble.ood_fit.OodFit`): the OOD flag's cut, statistics and test scores."""
    import dataclasses

    from orchestrator.tracking import ensemble_model, registry

    spec = serving_spec(task, clinical_result, facts_args["held"].kind)
    if ood_fit is not None:
        spec = dataclasses.replace(spec, ood=ood_fit.spec)
        expected = contract.answer(raw_test, spec, ood_fit.test_scores, ood_fit.test_constant)
    else:
        expected = contract.answer(raw_test, spec)
    recorded, meta = read_manifest(prepared.manifest_path, root=prepared.root)
    tracking.log_table_artifact(sweep.uri, run_id,
                                test_predictions(prepared, recorded, y_test, expected),
                                TEST_PREDICTIONS)
    members = {model.name: ensemble_model.copy_member(Path(model.model_path),
                                                      work / "members", model.name)
               for model, _ in parts}
    if ood_fit is not None:
        members.update(ood_fit.files(work / "ood"))
    model_uri = ensemble_model.log_ensemble_model(
        sweep.uri, run_id, {**spec_base, "serving": spec.to_dict()}, members, work)
    model = ensemble_model.load(model_uri, sweep.uri)
    check_served(model, prepared.paths("test"), expected, spec, log)
    facts = card_facts(sweep, task, prepared, recorded, meta, spec=spec, run_id=run_id,
                       **facts_args)
    name = registry.registered_name(task.name)
    version = registry.register(sweep.uri, model_uri, name, registry.CANDIDATE,
                                card=model_card(facts), tags=card_tags(facts))
    return model_uri, name, version
