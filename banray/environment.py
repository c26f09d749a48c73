"""The environment variables banray sets, in one place. Only those that Ray, Ray Tune, MLflow, pyarrow and the
AWS SDK read from the environment alone (and Ray's processes inherit); banray's own settings travel as typed
values, and its BANRAY_* variables are only ever read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


def set_variables(values: Mapping[str, str], keep_existing: bool = False) -> None:
    """Set `values` for this process and the processes it starts; with `keep_existing`, only those the
    environment does not set already (a user's own setting wins)."""
    os.environ.update({name: value for name, value in values.items() if not (keep_existing and name in os.environ)})


@contextlib.contextmanager
def variables_for_a_while(values: Mapping[str, str], keep_existing: bool = False) -> Iterator[None]:
    """`set_variables` within the block; what was there before is put back after it."""
    before = {name: os.environ.get(name) for name in values}
    set_variables(values, keep_existing)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
