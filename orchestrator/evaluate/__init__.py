"""External validation of a registered model (`python -m orchestrator.evaluate`): a new site's
data through the served pyfunc, figures with group-bootstrap intervals, whether performance
transported, the result on the model version. Not to be confused with
`orchestrator.clinical.evaluate`, the clinical report of the ensemble's own test split."""
