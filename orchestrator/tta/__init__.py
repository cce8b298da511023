"""Test-time augmentation: `policies` (pure data), `predict` (TensorFlow), `pool` (Ray actors)."""
