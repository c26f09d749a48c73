"""A sweep on Ray: its start, the driver and the DAG of generation groups, one group's Tune run with its search
and trials' MLflow runs, the evaluations after it, and the sweep's state and lock in storage."""
