"""Errors that reach users as one clear line (CLIs print them without a traceback)."""
from __future__ import annotations


class MedSweepError(Exception):
    """Base: anything a user can fix by changing input, configuration or environment."""


class ConfigError(MedSweepError):
    """An unknown name, an out-of-range option, a config that cannot run."""


class DataError(MedSweepError):
    """Missing folder, wrong layout, unknown label, too many unreadable images, a leaking split."""


class WeightsUnavailable(MedSweepError):
    """Pretrained weights cannot be found or fetched; the message says which file and where."""


class SweepInterrupted(MedSweepError):
    """Ctrl+C (SIGINT) or SIGTERM stopped a sweep; Tune saved its state, so `--resume` continues
    it."""


class InjectedFault(RuntimeError):
    """Raised once by a trial's `fail_at_epoch`, so tests can prove a crashed trial resumes.
    Deliberately not a MedSweepError: it must crash the trial like a real fault would."""
