"""A build's manifest (``<out>/manifest.json``): its teacher, counts, failures by stage, config and shards."""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from pipelines.build.schema import READABLE_VERSIONS, SCHEMA_VERSION, STAGES
from pipelines.settings import ConfigError, MissingInput
from pipelines.storage import Location


@dataclass
class Manifest:
    """What a build wrote, next to its shards (``<out>/manifest.json``)."""

    teacher: str
    embed_dim: int
    num_points: int
    num_shapes: int = 0  # rows written
    num_views: int = 0  # view embeddings written, all shapes
    num_texts: int = 0  # text embeddings written, all shapes
    failures: dict[str, int] = field(default_factory=dict)  # stage -> shapes dropped there
    config: dict[str, Any] = field(default_factory=dict)  # the resolved build config
    shards: list[str] = field(default_factory=list)  # shard files, relative to the build root
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"{where}: unknown manifest keys {unknown}, missing keys {missing}")
        if data.get("schema_version") not in READABLE_VERSIONS:
            version = data.get("schema_version")
            raise ValueError(f"{where}: schema version {version}, this code reads {READABLE_VERSIONS}")
        bad_stages = sorted(set(data.get("failures", {})) - set(STAGES))
        if bad_stages:
            raise ValueError(f"{where}: unknown failure stages {bad_stages}")
        return cls(**data)


def write_manifest(path_or_uri: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``manifest`` so that readers see the old file or the new one, never a partial one."""
    Location.of(path_or_uri).write_bytes(manifest.to_json().encode())


def read_manifest(path_or_uri: str | os.PathLike) -> Manifest:
    """A build's ``manifest.json``. A missing one raises ``MissingInput`` (the folder is not a build), an unreadable
    one ``ConfigError``; both name the path."""
    where = os.fspath(path_or_uri)
    location = Location.of(path_or_uri)
    if not location.is_file():
        folder = os.path.dirname(where.rstrip("/")) or "."
        raise MissingInput(f"{folder}: not a build (no manifest.json there; jobs/build_dataset.py writes one)")
    try:
        return Manifest.from_json(location.read_text(), where=where)
    except (ValueError, TypeError) as err:  # not JSON, or fields of the wrong kind
        raise ConfigError(f"{where}: not a readable build manifest ({err})") from err
