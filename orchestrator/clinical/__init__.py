"""What a clinician reads before trusting a number: the operating point, calibration, bootstrap
intervals, plots, Grad-CAM and the cases to review, for the final ensemble.

Pure maths in `operating_point`, `calibration`, `bootstrap` and `uncertainty.entropy`; TensorFlow
only in `gradcam` and `uncertainty.mc_dropout_probs`; figures in `plots`; what a head's kind fits,
measures and draws in `heads`; `evaluate` puts them together for every head of the task (a
single-label task is one head) and `html` writes report.html. Every choice (threshold, temperature) is fitted on
validation data; the test split is only measured.
"""
