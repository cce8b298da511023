"""MedSweep: sweeps, ensembles and tracking for transfer-learning medical image classifiers."""
__version__ = "0.1.0"
