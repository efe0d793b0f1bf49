"""Checkpoints on the Hugging Face Hub, named as timm and open_clip name hub weights.

``hf-hub:<org>/<repo>/<path in the repo>[@<revision>]`` names either a file (an official release ``model.pt``, a
``.safetensors``, ``.bin`` or ``.pth``) or a folder of ours (``model.safetensors`` + ``config.json``, as
``uni3d.save_checkpoint`` writes it; no path: the repository's root). The official release::

    uni3d.load_checkpoint("hf-hub:BAAI/Uni3D/modelzoo/uni3d-g/model.pt")

Files come through ``huggingface_hub``, so its cache (``HF_HUB_CACHE``, ``HF_HOME``), ``HF_TOKEN``,
``HF_HUB_OFFLINE`` (the cache only) and ``HF_ENDPOINT`` (a mirror) all apply, and a file already in the cache is
not fetched again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PREFIX = "hf-hub:"
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
FOLDER_FILES = ("config.json", "model.safetensors")  # uni3d.checkpoint's layout


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    path: str  # in the repository; "" = its root
    revision: str | None

    @property
    def is_file(self) -> bool:
        return self.path.endswith(FILE_SUFFIXES)


def is_hub(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_hub(spec: str) -> HubRef:
    """``hf-hub:org/repo/path@rev`` -> its parts; a malformed name is a ``ValueError`` that says the form."""
    body = spec.removeprefix(PREFIX)
    body, at, revision = body.partition("@")
    parts = [p for p in body.split("/") if p]
    if not is_hub(spec) or len(parts) < 2 or (at and not revision):
        raise ValueError(f"{spec!r}: a hub checkpoint is hf-hub:<org>/<repo>[/<path in the repo>][@<revision>]")
    return HubRef(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or None)


def hub_path(spec: str) -> Path:
    """The local path of a hub checkpoint (a file, or a folder of ours), fetched into the hub's cache if needed."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    ref = parse_hub(spec)
    names = [ref.path] if ref.is_file else [f"{ref.path}/{n}" if ref.path else n for n in FOLDER_FILES]
    files = []
    for name in names:
        try:
            files.append(Path(hf_hub_download(ref.repo_id, name, revision=ref.revision)))
        except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1, or no network) and not in the cache
            why = "the hub is not reachable" if _online() else "HF_HUB_OFFLINE is set"
            raise FileNotFoundError(
                f"{spec}: {name} of {ref.repo_id} is not in the Hugging Face cache and {why}; fetch it once where "
                "the hub is reachable, or point HF_HUB_CACHE at a cache that holds it"
            ) from None
        except (HfHubHTTPError, EntryNotFoundError) as e:  # no such repository, file or revision; gated, no token
            raise FileNotFoundError(f"{spec}: {' '.join(str(e).split())[:300]}") from None
    return files[0] if ref.is_file else files[0].parent


def _online() -> bool:
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE
