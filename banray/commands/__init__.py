"""The commands: the CLI, `plan` and the read-only look at sweeps (status, ls, report, ui, promote)."""
