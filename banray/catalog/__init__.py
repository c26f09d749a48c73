"""The catalog: what a run can be made of, each behind one registry: datasets with their splits and views
(data), models, losses (the objectives) and scores. No Ray, no MLflow."""
