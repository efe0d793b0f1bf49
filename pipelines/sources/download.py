"""Robust HTTP downloads into a local cache: bounded concurrency, retries with backoff, atomic writes.

Written for many small files from a rate-limited hub (Objaverse GLBs on Hugging Face answer HTTP 429
when hit hard; set HF_TOKEN for higher limits). ``Downloader.fetch(rel_path)`` maps ``rel_path`` to
``<base_url>/<rel_path>`` and to ``<cache_dir>/<rel_path>`` (the cache mirrors the remote layout):

- a cached file is returned without any request (a cached GLB is first checked to be whole: its
  header length must not exceed the file size; a broken one is downloaded again);
- the body is streamed into a ``*.part`` file next to the target and moved into place with
  ``os.replace`` only once complete, so a killed download never leaves a file a re-run trusts;
- retried: HTTP 429 and 5xx, timeouts, connection errors, truncated bodies (fewer bytes than
  ``Content-Length``, or a GLB shorter than its header's length field). Other 4xx fail at once.
- delay before retry ``k`` (1-based): ``d = min(backoff_max_s, backoff_base_s * 2**(k-1))`` times a
  jitter factor uniform in [0.5, 1) ("equal jitter": grows exponentially, never synchronised across
  workers); a ``Retry-After`` header raises it to at least the server's value; always capped by
  ``backoff_max_s``.
- concurrency: one semaphore per ``Downloader`` bounds the requests in flight across every thread that
  uses it (``fetch_many``'s pool included), so create one ``Downloader`` per process.

``timeout_s`` bounds the connect and every socket read, not a whole (possibly large) transfer.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import os
import random
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

USER_AGENT = "uni3d-ray-downloader/0.1"
_CHUNK = 1 << 20


@dataclass
class DownloadConfig:
    base_url: str  # files are fetched from f"{base_url}/{rel_path}"
    cache_dir: str | None = None  # required to download; the build passes "<output>/cache/<source>"
    max_concurrency: int = 8  # requests in flight per Downloader (i.e. per process)
    retries: int = 6  # retries after the first attempt: at most retries + 1 requests per file
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0  # per connect / socket read

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_concurrency < 1 or self.retries < 0:
            raise ValueError(f"need max_concurrency >= 1 and retries >= 0, got {self.max_concurrency}, {self.retries}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.timeout_s <= 0:
            raise ValueError("backoff_base_s and backoff_max_s must be >= 0 and timeout_s > 0")


def request_headers(url: str) -> dict[str, str]:
    """``HF_TOKEN`` goes to the hub (and to the ``HF_ENDPOINT`` mirror) only, never to other hosts:
    anonymous requests get low rate limits there."""
    headers = {"User-Agent": USER_AGENT}
    token = os.environ.get("HF_TOKEN", "").strip()
    host = urllib.parse.urlsplit(url).hostname or ""
    hub_hosts = {"huggingface.co", urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname or ""} - {""}
    if token and (host in hub_hosts or host.endswith(".huggingface.co")):
        headers["Authorization"] = f"Bearer {token}"
    return headers


class DownloadError(RuntimeError):
    """A file that could not be downloaded; the message names the URL, the attempts and the cause."""

    def __init__(self, message: str, url: str, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.attempts, self.status = url, attempts, status


class _Transient(Exception):
    """One failed attempt worth retrying."""

    def __init__(self, cause: str, retry_after: float | None = None) -> None:
        super().__init__(cause)
        self.retry_after = retry_after


class Downloader:
    """Fetches ``rel_path``s from ``cfg.base_url`` into ``cfg.cache_dir``; thread-safe."""

    def __init__(
        self, cfg: DownloadConfig, sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None
    ) -> None:
        self.cfg = cfg
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._slots = threading.BoundedSemaphore(cfg.max_concurrency)
        self._opener = urllib.request.build_opener()  # follows the hub's redirects to its CDN

    def __getstate__(self) -> dict:  # picklable (e.g. captured by a Ray task): locks are rebuilt
        return {"cfg": self.cfg, "sleep": self._sleep, "rng": self._rng}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state["sleep"], state["rng"])

    def url(self, rel_path: str) -> str:
        return f"{self.cfg.base_url.rstrip('/')}/{urllib.parse.quote(_check_rel(rel_path))}"

    def local_path(self, rel_path: str) -> Path:
        if self.cfg.cache_dir is None:
            raise ValueError(f"cannot download {rel_path!r}: no cache_dir configured")
        return Path(self.cfg.cache_dir) / _check_rel(rel_path)

    def backoff_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based); see the module docstring."""
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2.0 ** min(attempt - 1, 64))
        delay *= 0.5 + 0.5 * self._rng.random()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.cfg.backoff_max_s)

    def fetch(self, rel_path: str) -> Path:
        """The cached file for ``rel_path``, downloaded first if needed; raises ``DownloadError``."""
        dest = self.local_path(rel_path)
        if _is_whole(dest):
            return dest
        url = self.url(rel_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        attempts = self.cfg.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self._attempt(url, dest)
                return dest
            except _Transient as err:
                last = err
                if attempt < attempts:
                    delay = self.backoff_delay(attempt, err.retry_after)
                    log.warning("GET %s: attempt %d failed (%s); retrying in %.1f s", url, attempt, err, delay)
                    self._sleep(delay)
        raise DownloadError(f"GET {url}: failed after {attempts} attempts; last cause: {last}", url, attempts)

    def fetch_many(self, rel_paths: list[str]) -> dict[str, Path | Exception]:
        """Fetch each distinct path on a pool of ``max_concurrency`` threads; failures are returned, not raised."""
        unique = list(dict.fromkeys(rel_paths))
        if not unique:
            return {}

        def one(rel_path: str) -> Path | Exception:
            try:
                return self.fetch(rel_path)
            except Exception as err:  # noqa: BLE001 - each file's error is the caller's to report
                return err

        with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(unique))) as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))

    def _attempt(self, url: str, dest: Path) -> None:
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}-{threading.get_ident()}.part")
        request = urllib.request.Request(url, headers=request_headers(url))
        try:
            with self._slots, self._opener.open(request, timeout=self.cfg.timeout_s) as response:
                expected = response.headers.get("Content-Length")
                received = _stream_to(response, tmp)
            if expected is not None and expected.isdigit() and received != int(expected):
                raise _Transient(f"truncated body: {received} of {expected} bytes (Content-Length)")
            if dest.suffix == ".glb":
                _check_glb_download(tmp, received, url)
            os.replace(tmp, dest)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 429 or err.code >= 500:
                retry_after = _retry_after(err.headers.get("Retry-After"))
                raise _Transient(f"HTTP {err.code} {err.reason}", retry_after) from None
            raise DownloadError(f"GET {url}: HTTP {err.code} {err.reason} (not retried)", url, 1, err.code) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            raise _Transient(f"{type(reason).__name__}: {reason}") from None
        finally:
            tmp.unlink(missing_ok=True)


def _check_rel(rel_path: str) -> str:
    parts = PurePosixPath(rel_path).parts
    if not parts or rel_path.startswith("/") or any(p in ("..", ".") for p in parts) or "\\" in rel_path:
        raise ValueError(f"not a plain relative path under the cache: {rel_path!r}")
    return rel_path


def _stream_to(response, tmp: Path) -> int:
    received = 0
    with open(tmp, "wb") as f:
        while chunk := response.read(_CHUNK):  # read(n) returns b"" on an early close: counted by the caller
            f.write(chunk)
            received += len(chunk)
    return received


def _glb_declared_length(path: Path) -> int | None:
    """The length field of a GLB header, or None when the file does not start with one."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"glTF":
        return None
    return struct.unpack("<I", head[8:12])[0]


def _check_glb_download(tmp: Path, received: int, url: str) -> None:
    declared = _glb_declared_length(tmp)
    if declared is None:
        if received < 12:
            raise _Transient(f"truncated GLB: {received} bytes, shorter than a GLB header")
        raise DownloadError(f"GET {url}: the body is not a GLB (no 'glTF' magic)", url, 1)
    # trailing bytes after the declared length are harmless; fewer bytes mean a truncated transfer
    if received < declared:
        raise _Transient(f"truncated GLB: header declares {declared} bytes, received {received}")


def _is_whole(path: Path) -> bool:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    if path.suffix != ".glb":
        return True
    declared = _glb_declared_length(path)
    return declared is not None and declared <= size


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
