"""What a clinician reads before trusting a number: the operating point, calibration, bootstrap
intervals, plots, Grad-CAM and the cases to review, for the final ensemble.

Pure maths in `operating_point`, `calibration`, `bootstrap` and `uncertainty.entropy`; TensorFlow
only in `gradcam` and `uncertainty.mc_dropout_probs`; figures in `plots`; `evaluate` puts them
together and `html` writes report.html. Every choice (threshold, temperature) is fitted on
validation data; the test split is only measured.
"""
