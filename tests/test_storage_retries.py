"""Object-storage retries on moto's S3 server: banray's own calls and the retrying filesystem Ray gets."""

from __future__ import annotations

import os
import threading

import pyarrow.fs as pafs
import pytest

from banray.storage import StorageUnavailable, SweepStorage, ray_storage
from servers import free_port


def test_the_retrying_filesystem_survives_concurrent_copies(s3_endpoint, tmp_path):
    """pyarrow's copy_files runs uploads on its IO threads; four at once once deadlocked the pool."""
    source = tmp_path / "checkpoint"
    source.mkdir()
    for i in range(40):
        (source / f"part{i}.bin").write_bytes(os.urandom(100_000))
    path, fs = ray_storage("s3://banray/retrying/train")

    def upload_then_download(k: int) -> None:
        pafs.copy_files(str(source), f"{path}/copy{k}", destination_filesystem=fs)
        (tmp_path / f"back{k}").mkdir()
        pafs.copy_files(f"{path}/copy{k}", str(tmp_path / f"back{k}"), source_filesystem=fs)

    threads = [threading.Thread(target=upload_then_download, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "copies through the retrying filesystem hung"
    for k in range(4):
        assert sorted(p.read_bytes() for p in (tmp_path / f"back{k}").iterdir()) == sorted(
            p.read_bytes() for p in source.iterdir()
        )


def test_storage_that_stays_away_fails_with_the_path_after_the_budget(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("BANRAY_STORAGE_RETRY_S", "1")
    storage = SweepStorage("s3://banray/away", "sweep")
    with pytest.raises(StorageUnavailable, match=r"storage: writing s3://banray/away/sweep/state.json kept failing"):
        storage.write_text("state.json", "{}")


def test_a_missing_file_is_an_answer_not_an_outage(s3_endpoint):
    storage = SweepStorage("s3://banray/present", "sweep")
    assert storage.read_text("state.json") is None
    storage.write_text("state.json", "{}")
    assert storage.read_text("state.json") == "{}"
