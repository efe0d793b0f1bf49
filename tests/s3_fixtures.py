"""A real S3 API on this machine: moto's S3 server on 127.0.0.1 (``tests/s3_server.py``, a process of its own),
and the environment that points ``pyarrow.fs`` (hence Ray Data, Ray Train and our jobs, in this process and in
Ray's workers) at it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


class LocalS3:
    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile()  # the server's stderr, for the error if it does not start
        server = [sys.executable, str(Path(__file__).with_name("s3_server.py"))]
        self._server = subprocess.Popen(server, stdout=subprocess.PIPE, stderr=self._log, text=True)
        port = self._server.stdout.readline().strip()  # type: ignore[union-attr]
        if not port.isdigit():
            self._log.seek(0)
            raise RuntimeError(f"moto's S3 server did not start: {self._log.read().decode()[-2000:]}")
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,  # read by pyarrow's S3 filesystem (and boto3)
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata look-ups for credentials
        }
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        self.fs = pafs.S3FileSystem(
            endpoint_override=self.endpoint, access_key="testing", secret_key="testing", region="us-east-1",
            allow_bucket_creation=True,
        )  # fmt: skip

    def bucket(self, name: str) -> str:
        self.fs.create_dir(name)
        return f"s3://{name}"

    def keys(self, prefix: str) -> list[str]:
        """Every object under ``bucket/prefix``, as ``bucket/key``."""
        infos = self.fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def stop(self) -> None:
        self._server.terminate()
        try:
            self._server.wait(10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait(10)
        self._server.stdout.close()  # type: ignore[union-attr]
        self._log.close()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
