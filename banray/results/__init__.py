"""What a sweep leaves: its MLflow layout (tracking, through a bounded number of connections: mlflow_calls),
its report and the paired statistics behind it."""
