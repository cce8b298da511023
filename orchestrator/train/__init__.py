"""One training trial: `trial.train_trial` (no Ray), the Keras loop in `trainer` (what the
model's outputs train on in `outputs`, unfreezing in `phases`), the trial's file names and records
in `artifacts`, the CLI in `__main__` (`python -m orchestrator.train`). What a trial is told:
`config.TrialConfig`, checked against the registries in `schedules` and `augmentations`; its
batches come from `pipeline`, its devices are set up by `devices`."""
