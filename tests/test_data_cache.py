"""The user cache of dataset arrays and splits: what a trial reads instead of importing scikit-learn."""

import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from banray.catalog import data
from conftest import REPO


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "banray" / "arrays"


def test_a_cached_split_is_scikit_learns(cache):
    labels = np.repeat(np.arange(5), 40)[np.random.default_rng(1).permutation(200)]
    expected = train_test_split(np.arange(200), test_size=0.3, random_state=7, stratify=labels)
    for _ in range(2):  # built, then read back
        assert all(np.array_equal(a, b) for a, b in zip(data.stratified_split(labels, 0.3, 7), expected))
    assert len(list(cache.glob("split-*.npz"))) == 1
    other = data.stratified_split(labels, 0.3, 8)  # another seed is another entry
    assert len(list(cache.glob("split-*.npz"))) == 2 and not np.array_equal(other[0], expected[0])


def test_digits_come_from_the_cache_without_importing_scikit_learn(cache):
    code = ("import sys; from banray.catalog.data import load_splits; s = load_splits('digits', '.', 0.2, 3); "
            "print(len(s.train), len(s.val), len(s.test), 'sklearn' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache.parents[1]), "PYTHONPATH": str(REPO)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
            for _ in range(2)]
    assert [run.stdout.split() for run in runs] == [["1149", "288", "360", "True"], ["1149", "288", "360", "False"]]
    images = np.load(cache / f"digits-sklearn{data.importlib.metadata.version('scikit-learn')}.npz")["images"]
    assert np.array_equal(images, load_digits().images)


def test_an_unreadable_cache_entry_is_built_again(cache):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(3)}

    data.cached_arrays("thing", build)
    (cache / "thing.npz").write_bytes(b"not an npz file")
    assert np.array_equal(data.cached_arrays("thing", build)["x"], np.arange(3)) and len(calls) == 2
    assert np.array_equal(data.cached_arrays("thing", build)["x"], np.arange(3)) and len(calls) == 2
    assert [p.name for p in cache.iterdir()] == ["thing.npz"]  # no partial file left behind


def test_without_a_writable_cache_arrays_are_built_each_time(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    calls = []
    for _ in range(2):
        assert data.cached_arrays("thing", lambda: calls.append(1) or {"x": np.ones(2)})["x"].tolist() == [1, 1]
    assert len(calls) == 2
