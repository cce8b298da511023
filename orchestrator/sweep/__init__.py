"""The Ray Tune sweep: `runner.run_sweep` (the API: search, cross-validation, ensemble, in that
order), `budget` (what a sweep may spend), `tuner` (the Tune set-up both stages share), `cv`
(the cross-validation stage), `trainable` (the Ray side of a trial, without MLflow), `tracker`
(the driver's MLflow callback), `progress` (what the console shows while trials run), `records`
(data records, leaderboard), `summary` (the parent run's note), `state` (storage path, the
versioned sweep state, finding a sweep to resume), the CLI in `__main__`. Connecting to Ray is
`orchestrator.cluster`'s."""
