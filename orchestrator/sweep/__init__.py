"""The Ray Tune sweep: `runner.run_sweep` (the API), `trainable` (the Ray side of a trial),
`progress` (what the console shows while trials run), `state` (storage path, resume,
connecting to Ray), the CLI in `__main__`."""
