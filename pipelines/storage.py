"""Where runs, checkpoints, galleries and reports live: a local folder or a URI (``s3://``, ``gs://``,
anything ``pyarrow.fs`` resolves), so that no job needs a folder shared between nodes.

Credentials and endpoints come from the environment as ``pyarrow.fs`` reads them (``AWS_*``,
``AWS_ENDPOINT_URL`` for an S3-compatible store such as MinIO, Google's application credentials); Ray's
workers on a node inherit them from the node's environment. Local paths are made absolute at once, since
Ray's workers run in other folders.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipelines.settings import MissingInput
from uni3d.hub import is_hub


def is_uri(path_or_uri: str | os.PathLike) -> bool:
    text = os.fspath(path_or_uri)
    return "://" in text and not text.startswith("file://")


class Location:
    """A file or folder, local or in object storage; ``str()`` gives it back as the user wrote it (absolute).

    The filesystem is resolved on first use (for S3 that asks the bucket's region), then shared by the
    locations derived from this one."""

    def __init__(self, uri: str, fs: pafs.FileSystem | None = None, path: str | None = None) -> None:
        self.uri = uri  # an absolute local path, or scheme://bucket/key
        self._fs, self._path = fs, path

    @classmethod
    def of(cls, path_or_uri: str | os.PathLike | Location) -> Location:
        if isinstance(path_or_uri, Location):
            return path_or_uri
        text = os.fspath(path_or_uri)
        if is_uri(text):
            return cls(text.rstrip("/"))
        if text.startswith("file://"):
            text = text[len("file://") :]
        local = os.path.abspath(os.path.expanduser(text))
        return cls(local, pafs.LocalFileSystem(), local)

    def _resolve(self) -> None:
        if self._fs is None:
            self._fs, path = pafs.FileSystem.from_uri(self.uri)
            self._path = path.rstrip("/")

    @property
    def fs(self) -> pafs.FileSystem:
        self._resolve()
        return self._fs

    @property
    def path(self) -> str:
        """The path within ``fs``."""
        self._resolve()
        return self._path

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        return self.child(name)

    @property
    def local(self) -> bool:
        return not is_uri(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        uri = self.uri.rsplit("/", 1)[0] or "/"
        if self._fs is None:
            return Location(uri)
        return Location(uri, self._fs, self._path.rsplit("/", 1)[0] or "/")

    def child(self, *parts: str) -> Location:
        rel = "/".join(p.strip("/") for p in parts if p)
        if self._fs is None:
            return Location(f"{self.uri}/{rel}")
        return Location(f"{self.uri}/{rel}", self._fs, f"{self._path}/{rel}")

    def as_path(self) -> Path:
        """The local path; a URI has none (copy it with ``download`` or ``local_copy``)."""
        if not self.local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.path)

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder; in object storage, any key prefix with objects under it."""
        kind = self.info().type
        if kind == pafs.FileType.Directory:
            return True
        if kind == pafs.FileType.NotFound and not self.local:  # some stores list prefixes only
            return bool(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)))
        return False

    def files(self, recursive: bool = True) -> list[Location]:
        """The files under this folder (none when it does not exist), sorted by path."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        infos = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        root = self.path.rstrip("/")
        return [self.child(i.path[len(root) + 1 :]) for i in sorted(infos, key=lambda i: i.path)]

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Readers see the old content or the new, never a part (a rename locally; object stores publish
        an object whole when its upload completes)."""
        if not self.local:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # same folder, one filesystem: atomic
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def delete(self) -> None:
        kind = self.info().type
        if kind == pafs.FileType.File:
            self.fs.delete_file(self.path)
        elif kind == pafs.FileType.Directory or (kind == pafs.FileType.NotFound and self.is_dir()):
            self.fs.delete_dir(self.path)

    def upload(self, source: str | os.PathLike) -> None:
        """Copy a local file or folder here (a folder's files keep their relative paths)."""
        source = os.path.abspath(source)
        if os.path.isdir(source):
            self.mkdir()
            pafs.copy_files(source, self.path, pafs.LocalFileSystem(), self.fs, use_threads=True)
        else:
            self.parent.mkdir()
            pafs.copy_files(source, self.path, pafs.LocalFileSystem(), self.fs)

    def download(self, target: str | os.PathLike) -> Path:
        """Copy this file or folder to the local ``target``; returns it."""
        target = Path(target)
        if self.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(self.path, str(target), self.fs, pafs.LocalFileSystem())
            return target
        target.mkdir(parents=True, exist_ok=True)
        if self.files():
            pafs.copy_files(self.path, str(target), self.fs, pafs.LocalFileSystem(), use_threads=True)
        return target

    def copy_to(self, target: Location) -> None:
        """Copy this file or folder to ``target`` (any filesystem to any other)."""
        if self.is_file():
            target.parent.mkdir()
        else:
            target.mkdir()
        pafs.copy_files(self.path, target.path, self.fs, target.fs, use_threads=True)


@contextmanager
def local_copy(path_or_uri: str | os.PathLike | Location) -> Iterator[Path]:
    """A local path for reading: the path itself when local, else a temporary copy removed afterwards; for an
    ``hf-hub:`` checkpoint name, its file or folder in this node's Hugging Face cache (``uni3d.hub``)."""
    if is_hub(path_or_uri):
        yield hub_local(str(path_or_uri))
        return
    where = Location.of(path_or_uri)
    if where.local:
        yield where.as_path()
        return
    folder = tempfile.mkdtemp(prefix="uni3d-copy-")
    try:
        yield where.download(os.path.join(folder, where.name or "object"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_output(path_or_uri: str | os.PathLike | Location) -> Iterator[Path]:
    """A local folder to write into: the folder itself when local, else a temporary one uploaded on success."""
    where = Location.of(path_or_uri)
    if where.local:
        where.as_path().mkdir(parents=True, exist_ok=True)
        yield where.as_path()
        return
    folder = Path(tempfile.mkdtemp(prefix="uni3d-out-"))
    try:
        yield folder
        where.upload(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_init(spec: Any) -> Iterator[Any]:
    """An init spec (``uni3d.InitSpec``) whose file or checkpoint folder is on this machine: the spec itself
    when it is local (or ``scratch``), else the same spec on a temporary copy of its URI, removed afterwards, or on
    its file or folder in the Hugging Face cache for an ``hf-hub:`` name."""
    if spec.kind == "scratch" or not (is_uri(spec.path) or is_hub(spec.path)):
        yield spec
        return
    if is_uri(spec.path) and not Location.of(spec.path).exists() and not Location.of(spec.path).is_dir():
        raise FileNotFoundError(f"init {spec}: {spec.path} does not exist")
    with local_copy(spec.path) as path:  # a temporary copy of a URI, the hub cache's file or folder
        yield dataclasses.replace(spec, path=str(path))


def hub_local(spec: str) -> Path:
    """An ``hf-hub:`` checkpoint (``uni3d.hub``) in this node's Hugging Face cache, fetched there if need be; a name
    that cannot be had (no such file, offline and not cached) is one ``MissingInput`` line saying why."""
    from uni3d.hub import hub_path

    try:
        return hub_path(spec)
    except (FileNotFoundError, ValueError) as exc:
        raise MissingInput(str(exc)) from None
