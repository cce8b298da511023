"""One training trial: `trial.train_trial` (no Ray), the Keras loop in `trainer`, the trial's
file names and records in `artifacts`, the CLI in `__main__` (`python -m orchestrator.train`)."""
