"""Where a sweep's files live: a local folder or an s3:// URI, through pyarrow's filesystems (Ray's own).

`storage` in the spec is the root; a sweep writes under `<storage>/<name>/`: Ray Train checkpoints
(`train/`), Ray Tune state (`tune/`), the sweep state (`state.json`), the resolved spec and the report.
S3 credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or any other
source the AWS SDK reads); `storage_endpoint` (or AWS_ENDPOINT_URL_S3) points at MinIO or another
S3-compatible service.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_S3"  # honoured by pyarrow, boto3 and MLflow's S3 artifact store


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def use_endpoint(endpoint: str | None) -> dict[str, str]:
    """Point this process (and, through the returned env vars, Ray's workers) at an S3-compatible endpoint."""
    if endpoint:
        os.environ[ENDPOINT_VARIABLE] = endpoint
    value = os.environ.get(ENDPOINT_VARIABLE)
    return {ENDPOINT_VARIABLE: value} if value else {}


class SweepStorage:
    """The folder `<root>/<name>` of one sweep, local or in object storage."""

    def __init__(self, root: str, name: str):
        if not is_remote(root):
            root = str(Path(root).expanduser().resolve())
        self.uri = f"{root.rstrip('/')}/{name}"
        self.fs, self.path = pafs.FileSystem.from_uri(self.uri)

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    def child(self, relative: str) -> str:
        """The URI of `relative` inside the sweep folder (what Ray's storage_path takes)."""
        return f"{self.uri}/{relative}"

    def holds_anything(self) -> bool:
        """Whether the sweep folder exists with something in it; OSError if the storage is unreachable."""
        if self.remote:
            bucket = self.path.split("/")[0]
            if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise OSError(f"bucket '{bucket}' does not exist; create it first")
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return False
        return bool(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)))

    def clear(self) -> None:
        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.path)

    def create(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def write_bytes(self, relative: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{self.path}/{relative}") as stream:
            stream.write(data)
        return self.child(relative)

    def write_text(self, relative: str, text: str) -> str:
        return self.write_bytes(relative, text.encode())

    def write_json(self, relative: str, value: Any) -> str:
        return self.write_text(relative, json.dumps(value, indent=2) + "\n")

    def local_dir(self) -> Path | None:
        return None if self.remote else Path(self.path)
