"""What the clinical evaluation may be asked (`ClinicalOptions`), and the command-line options
that ask it, shared by `python -m orchestrator.ensemble` and `python -m orchestrator.sweep`
(whose last stage builds the ensemble). Light: no TensorFlow, Ray or MLflow."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from orchestrator.clinical.bootstrap import DEFAULT_RESAMPLES
from orchestrator.clinical.conformal import DEFAULT_SET_COVERAGE, check_coverage
from orchestrator.clinical.ood import DEFAULT_FALSE_ALARM
from orchestrator.clinical.operating_point import RULES
from orchestrator.clinical.referral import DEFAULT_REFER_CONFIDENCE, DEFAULT_TARGET_ACCURACY
from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class ClinicalOptions:
    threshold_rule: str = "sensitivity_bound"  # or "sensitivity", "youden" (operating_point)
    target_sensitivity: float = 0.90
    target_accuracy: float = DEFAULT_TARGET_ACCURACY  # of the cases the model does not refer
    refer_confidence: float = DEFAULT_REFER_CONFIDENCE  # level of that accuracy's lower bound
    resamples: int = DEFAULT_RESAMPLES
    mc_dropout_passes: int = 0  # 0: off
    gradcam_per_group: int = 3  # images per class, correct and wrong each
    review_cases: int = 20
    seed: int = 0
    # prediction sets: their nominal coverage, and one quantile per class ("Mondrian") or one
    set_coverage: float = DEFAULT_SET_COVERAGE
    set_conditional: bool = False
    ood_false_alarm: float = DEFAULT_FALSE_ALARM  # the OOD cut's rate on held-out images
    # columns the test split is measured by, value by value (docs/evaluation.md, Subgroups);
    # recorded with the split by the sweep; never read by any choice
    subgroups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold_rule not in RULES:
            raise ConfigError(f"threshold rule {self.threshold_rule!r}: valid {', '.join(RULES)}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ConfigError(f"target sensitivity must be in (0, 1], got "
                              f"{self.target_sensitivity}")
        if not 0.0 < self.target_accuracy <= 1.0:
            raise ConfigError(f"target accuracy must be in (0, 1], got {self.target_accuracy}")
        if not 0.5 <= self.refer_confidence < 1.0:
            raise ConfigError(f"refer confidence must be in [0.5, 1), got "
                              f"{self.refer_confidence}")
        if self.resamples < 1000:
            raise ConfigError(f"bootstrap resamples must be >= 1000, got {self.resamples}")
        if not 0.0 < self.ood_false_alarm < 0.5:
            raise ConfigError(f"OOD false-alarm rate must be in (0, 0.5), got "
                              f"{self.ood_false_alarm}")
        if self.mc_dropout_passes < 0:
            raise ConfigError(f"MC-dropout passes must be >= 0, got {self.mc_dropout_passes}")
        try:
            check_coverage(self.set_coverage)
        except ValueError as err:
            raise ConfigError(f"--set-coverage: {err}") from None


def add_clinical_arguments(parser: argparse.ArgumentParser) -> None:
    """The clinical report's options, one group (docs/clinical_report.md)."""
    c = parser.add_argument_group("clinical report (docs/clinical_report.md)")
    c.add_argument("--threshold-rule", default="sensitivity_bound", choices=RULES,
                   help="binary tasks, on held-out predictions: the most specific threshold "
                   "whose sensitivity has a 95%% lower bound >= --target-sensitivity "
                   "(sensitivity_bound), whose point sensitivity reaches it (sensitivity), or "
                   "Youden's J (default %(default)s)")
    c.add_argument("--target-sensitivity", type=float, default=0.90,
                   help="default %(default)s")
    c.add_argument("--target-accuracy", type=float, default=DEFAULT_TARGET_ACCURACY,
                   help="the served model refers a case to a person below the lowest confidence "
                   "cut whose accepted held-out cases' accuracy has a --refer-confidence lower "
                   "bound at or above this; none: every case is referred (default %(default)s)")
    c.add_argument("--refer-confidence", type=float, default=DEFAULT_REFER_CONFIDENCE,
                   help="level of that simultaneous Clopper-Pearson lower bound (default "
                   "%(default)s)")
    c.add_argument("--set-coverage", type=float, default=DEFAULT_SET_COVERAGE, metavar="LEVEL",
                   help="nominal coverage of the served prediction sets, strictly between 0 and "
                   "1, fitted on held-out predictions (default %(default)s)")
    c.add_argument("--set-conditional", action="store_true",
                   help="one set quantile per true class ('Mondrian'), so each class gets the "
                   "coverage, not only their average: for imbalanced tasks; needs enough "
                   "held-out cases of every class (off by default)")
    c.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help="bootstrap resamples for the 95%% intervals (>= 1000; default "
                   "%(default)s)")
    c.add_argument("--mc-dropout", type=int, default=0, metavar="PASSES",
                   help="MC-dropout passes for predictive entropy (0: off, the default)")
    c.add_argument("--subgroup", action="append", default=[], metavar="COLUMN",
                   help="measure the test split per value of COLUMN (repeatable): an extra "
                   "column of your CSV, HAM10000's sex, age (banded) or localization, DICOM's "
                   "PatientSex, PatientAge (banded) or Manufacturer; recorded with the split, "
                   "never used to choose anything (docs/evaluation.md, Subgroups)")
    c.add_argument("--ood-false-alarm", type=float, default=DEFAULT_FALSE_ALARM,
                   help="the served out-of-distribution flag's cut: the share of held-out "
                   "in-distribution images it may flag (default %(default)s)")


def clinical_options(args: argparse.Namespace) -> ClinicalOptions:
    """The parsed options as the evaluation takes them (checked: a bad value is a ConfigError)."""
    return ClinicalOptions(threshold_rule=args.threshold_rule,
                           target_sensitivity=args.target_sensitivity,
                           target_accuracy=args.target_accuracy,
                           refer_confidence=args.refer_confidence,
                           resamples=args.resamples, mc_dropout_passes=args.mc_dropout,
                           ood_false_alarm=args.ood_false_alarm,
                           set_coverage=args.set_coverage,
                           set_conditional=args.set_conditional,
                           subgroups=tuple(dict.fromkeys(args.subgroup)))
