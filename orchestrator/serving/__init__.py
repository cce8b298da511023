"""What a served MedSweep model promises: the inputs it reads, the answer it gives, the card that
says what stands behind it. Pure (numpy, pandas, OpenCV); the MLflow side is in
`orchestrator.tracking.ensemble_model`."""
