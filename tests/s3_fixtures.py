"""A real S3 API on this machine: moto's server on 127.0.0.1, and the environment that points ``pyarrow.fs``
(hence Ray Data, Ray Train and our jobs, in this process and in Ray's workers) at it."""

from __future__ import annotations

import logging
import os

import pyarrow.fs as pafs
from moto.server import ThreadedMotoServer


class LocalS3:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
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
        self._server.stop()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
