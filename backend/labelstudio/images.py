"""Fetch task images and dense ground-truth arrays from Label Studio, safely.

URL kinds (see ``docs/labeling.md``):

- ``/data/upload/...``, ``/data/local-files/?d=...`` and other paths starting with ``/``: joined to
  ``ls_url`` and sent with the LS token (see "Tokens" below).
- absolute ``http(s)`` URLs on the LS host (same scheme, host and port as ``ls_url``): token sent.
- other ``http(s)`` URLs: only when the host is in ``allow_hosts`` (``"example.com"`` or
  ``"*.example.com"``); no token.
- ``s3://``, ``gs://``, ``azure-blob://``: ``GET {ls_url}/tasks/{task_id}/presign/?fileuri=<urlsafe
  base64 of the URI>`` (as label-studio-sdk does), token sent; LS answers with the bytes or a redirect
  to a signed URL, which is followed without the token (any public host).

SSRF rules: every other scheme (``file:``, ``data:``, ``ftp:``...) is refused; a host that resolves to a
loopback, link-local, private, multicast, reserved or unspecified address is refused unless it is the
LS host or in ``allow_hosts``; every redirect is re-checked (at most 5); the body is streamed and cut
at ``max_bytes``; images over ``max_pixels`` are refused before decoding (``PIL.Image.MAX_IMAGE_PIXELS``
is left alone). For hosts that must be public, DNS is checked before the request (a clear error) and
the connected socket's peer address again before a byte is sent (:mod:`backend.labelstudio.netguard`), so DNS
rebinding between the two does not reach an internal address.

Tokens (as ``label_studio_sdk``'s ``TokensClientExt`` decides): a token that is not a JWT is a legacy
API token, sent as ``Authorization: Token <token>`` (``token_scheme``). A JWT (decoded without
verifying the signature) with ``token_type`` ``"refresh"`` is a personal access token (LS >= 1.19):
it is exchanged for a short-lived access token with ``POST {ls_url}/api/token/refresh/``
``{"refresh": <token>}`` -> ``{"access": ...}``, sent as ``Authorization: Bearer <access>``; the access
token is cached (shared by the fetch threads) and refreshed 30 s before its ``exp`` or after a 401.
A JWT access token is sent as ``Bearer`` as is.

Cache: raw bytes on disk under ``cache_dir``, file name = sha256 of the URL (for relative URLs, the
absolute LS URL; for cloud URIs, the URI itself). Files behind LS URLs and cloud URIs are treated as
immutable (LS stores uploads under unique names); so are allow-listed URLs. Writes are atomic. The URL
policy is checked before the cache is looked at (a host removed from the allow-list is not served from
the cache), and the cache is capped at ``cache_max_bytes`` (default 4 GiB): the least recently written
files go first.

Limits: ``max_bytes`` per download, ``max_pixels`` per image (checked from the header, before
decoding), ``timeout`` per connect/read and ``total_timeout`` (default 60 s) for the whole fetch,
redirects included. Only PNG, JPEG, WebP, TIFF, BMP, GIF and ``.npy`` bytes are returned (checked by
their magic bytes, also on cache hits): PIL never sees another format (EPS, PSD, ICO, ...).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import requests
import urllib3
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.labelstudio.auth import ImageError, LSAuth, jwt_claims
from backend.labelstudio.decode import decode_fitted
from backend.labelstudio.netguard import UnsafeURL, is_public, parse_http_url, public_only_session
from mtal_models.data.geometry import Fit

__all__ = ["CLOUD_SCHEMES", "ImageError", "ImageFetcher", "jwt_claims"]

logger = logging.getLogger(__name__)
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
_MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
# the file formats handed to PIL / numpy, by magic bytes (WebP: RIFF....WEBP)
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
          b"BM": "BMP", b"GIF87a": "GIF", b"GIF89a": "GIF", b"\x93NUMPY": "NPY"}


def _check_format(url: str, data: bytes) -> None:
    if any(data.startswith(m) for m in _MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return
    raise ImageError(f"{url}: cannot decode: not an allowed file format (PNG, JPEG, WebP, TIFF, BMP, GIF, .npy)")


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        return parse_http_url(url).origin
    except UnsafeURL:
        return None


class ImageFetcher:
    """Downloads task images/arrays from LS, cloud storage (via LS presign) or allow-listed hosts."""

    def __init__(
        self,
        ls_url: str | None,
        ls_token: str | None,
        allow_hosts: Sequence[str] = (),
        cache_dir: Path | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        max_pixels: int = 40_000_000,
        timeout: float = 10.0,
        token_scheme: str = "Token",
        total_timeout: float = 60.0,
        cache_max_bytes: int = 4 * 1024**3,
    ) -> None:
        self.total_timeout = float(total_timeout)
        self.cache_max_bytes = int(cache_max_bytes)
        self._cache_bytes: int | None = None  # running total, scanned at the first write
        self._cache_lock = threading.Lock()
        self.ls_url = ls_url.rstrip("/") if ls_url else None
        if self.ls_url:
            try:
                parse_http_url(self.ls_url)
            except UnsafeURL as e:
                raise ValueError(f"ls_url must be a plain http(s) URL, got {ls_url!r}: {e}") from None
        self.ls_token = ls_token
        self.allow_hosts = tuple(h.lower().strip() for h in allow_hosts if h.strip())
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        self.token_scheme = token_scheme
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies/netrc from the environment
        self.public_session = public_only_session()  # presigned URLs on hosts nobody allow-listed
        self._auth = LSAuth(ls_token, token_scheme, self.session, self.timeout)

    # ---- public API --------------------------------------------------------------------------
    def fetch_image(self, url: str, task_id: int | None = None) -> np.ndarray:
        """Image at ``url`` -> uint8 [H, W, 3] RGB (EXIF orientation applied; gray/RGBA/16-bit converted)."""
        data = self.fetch_bytes(url, task_id)
        try:
            with Image.open(io.BytesIO(data)) as im:
                self._check_pixels(im, url)
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    arr = (arr / 257.0 if arr.max(initial=0) > 255 else arr).clip(0, 255).astype(np.uint8)
                    return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
                return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            raise ImageError(f"{url}: cannot decode image: {e}") from e

    def fetch_fitted(self, url: str, task_id: int | None, fit_for: Callable[[int, int], Fit]) -> tuple[np.ndarray, Fit]:
        """Image at ``url`` decoded straight to the network input: (uint8 [H, W, 3] padded, its
        :class:`~mtal_models.data.geometry.Fit`), ``fit_for(height, width)`` of the displayed image
        (:func:`backend.labelstudio.decode.decode_fitted`: JPEG drafts, EXIF orientation, one full-size copy at
        most)."""
        return decode_fitted(self.fetch_bytes(url, task_id), url, fit_for, self.max_pixels)

    def fetch_array(self, url: str, task_id: int | None = None) -> np.ndarray:
        """Dense ground truth at ``url``: ``.npy`` (``allow_pickle=False``) as stored (float arrays as
        float32); a 16-bit PNG is depth in millimetres -> float32 [H, W] metres (0 stays 0 = invalid);
        an 8-bit RGB image is normals ``v / 127.5 - 1`` -> float32 [H, W, 3] (black pixels -> 0 = invalid)."""
        data = self.fetch_bytes(url, task_id)
        if data[:6] == b"\x93NUMPY":
            try:
                arr = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as e:
                raise ImageError(f"{url}: cannot read .npy: {e}") from e
            return arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        try:
            with Image.open(io.BytesIO(data)) as im:
                self._check_pixels(im, url)
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    return np.asarray(im, dtype=np.float32) / 1000.0
                if im.mode == "RGB":
                    rgb = np.asarray(im, dtype=np.float32)
                    normals = rgb / 127.5 - 1.0
                    normals[(rgb == 0).all(axis=2)] = 0.0
                    return normals
                raise ImageError(f"{url}: unsupported dense map mode {im.mode!r} (want .npy, 16-bit PNG or RGB)")
        except ImageError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
            raise ImageError(f"{url}: cannot decode dense map: {e}") from e

    def fetch_bytes(self, url: str, task_id: int | None = None) -> bytes:
        """Raw bytes behind a task URL (cached when ``cache_dir`` is set)."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError(f"{url!r}: image URL must be a non-empty string")
        url = url.strip()
        target, key = self._resolve(url, task_id)
        self._check_target(url, target, via_presign=False)  # the policy first, then the cache
        path = self._cache_path(key)
        if path is not None and path.is_file():
            data = path.read_bytes()
            _check_format(url, data)
            return data
        data = self._download(url, target)
        _check_format(url, data)
        if path is not None:
            self._cache_write(path, data)
            self._cache_trim(len(data))
        return data

    # ---- URL policy --------------------------------------------------------------------------
    def _resolve(self, url: str, task_id: int | None) -> tuple[str, str]:
        """-> (http URL to GET, cache key)."""
        scheme = url.split(":", 1)[0].lower() if ":" in url.split("/", 1)[0] else ""
        if url.startswith("/") and not url.startswith("//"):
            ls = self._need_ls(url)
            full = ls + url
            return full, full
        if scheme in CLOUD_SCHEMES:
            ls = self._need_ls(url)
            if task_id is None:
                raise ImageError(f"{url}: cloud storage URIs need the task id for LS's presign endpoint")
            encoded = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{ls}/tasks/{int(task_id)}/presign/?fileuri={encoded}", url
        if scheme in ("http", "https"):
            return url, url
        kinds = "http(s), /data/..., s3/gs/azure-blob"
        raise ImageError(f"{url}: URL scheme {scheme or '(none)'!r} is not allowed ({kinds})")

    def _need_ls(self, url: str) -> str:
        if not self.ls_url:
            raise ImageError(f"{url}: needs the Label Studio URL (LABEL_STUDIO_URL) to be resolved")
        return self.ls_url

    def _is_ls(self, url: str) -> bool:
        origin = _origin(url)
        return bool(self.ls_url) and origin is not None and origin == _origin(self.ls_url or "")

    def _allowed_host(self, host: str) -> bool:
        return any(host == a or (a.startswith("*.") and host.endswith(a[1:])) for a in self.allow_hosts)

    def _check_target(self, original: str, target: str, via_presign: bool) -> tuple[str, bool, bool]:
        """Raise unless ``target`` may be fetched; returns (the URL to send, as parsed and rebuilt by
        :func:`backend.labelstudio.netguard.parse_http_url`; send the LS token; connect to public peers only)."""
        try:
            parsed = parse_http_url(target)
        except UnsafeURL as e:
            raise ImageError(f"{original}: refused URL: {e}") from None
        if self.ls_url and parsed.origin == _origin(self.ls_url):
            return parsed.url, True, False
        host = parsed.host
        allowed = self._allowed_host(host)
        if not allowed and not via_presign:
            raise ImageError(f"{original}: host {host!r} is neither the Label Studio host nor in the allowed hosts")
        if not allowed:
            self._check_public(original, host, parsed.port)
        return parsed.url, False, not allowed

    @staticmethod
    def _check_public(original: str, host: str, port: int) -> None:
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as e:
            raise ImageError(f"{original}: cannot resolve host {host!r}: {e}") from e
        for info in infos:
            if not is_public(info[4][0]):
                ip = info[4][0].split("%", 1)[0]
                raise ImageError(f"{original}: host {host!r} resolves to non-public address {ip}; refused")

    # ---- HTTP --------------------------------------------------------------------------------
    def _download(self, original: str, target: str) -> bytes:
        via_presign = False
        retried = False
        hops = 0
        deadline = time.monotonic() + self.total_timeout
        while hops <= _MAX_REDIRECTS:
            if time.monotonic() > deadline:
                raise ImageError(f"{original}: fetch took longer than {self.total_timeout:g} s; aborted")
            target, send_token, public_only = self._check_target(original, target, via_presign)
            headers = {"Accept": "*/*"}
            auth = self._auth.header(self.ls_url or "", original) if send_token else None
            if auth:
                headers["Authorization"] = auth
            session = self.public_session if public_only else self.session
            try:
                resp = session.get(
                    target, headers=headers, timeout=self.timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as e:
                raise ImageError(f"{original}: request failed: {e}") from e
            with resp:
                if resp.status_code == 401 and auth and self._auth.refreshes and not retried:
                    self._auth.invalidate(auth)  # access token expired early or revoked: refresh once
                    retried = True
                    continue
                if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise ImageError(f"{original}: redirect without Location")
                    # only LS's presign endpoint may send us to a non-allow-listed (public) host
                    via_presign = "/presign/" in parse_http_url(target).path and self._is_ls(target)
                    target = urljoin(target, location)
                    hops += 1
                    continue
                if resp.status_code != 200:
                    raise ImageError(f"{original}: HTTP {resp.status_code} from {parse_http_url(target).host}")
                return self._read_limited(original, resp, deadline)
        raise ImageError(f"{original}: more than {_MAX_REDIRECTS} redirects")

    def _read_limited(self, original: str, resp: requests.Response, deadline: float | None = None) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise ImageError(f"{original}: {length} bytes exceeds the limit of {self.max_bytes}")
        buf = bytearray()
        try:
            # read1: what one recv brings (iter_content would wait for a whole chunk from a dripping server)
            while chunk := resp.raw.read1(_CHUNK, decode_content=True):
                buf += chunk
                if len(buf) > self.max_bytes:
                    raise ImageError(f"{original}: more than {self.max_bytes} bytes; download aborted")
                if deadline is not None and time.monotonic() > deadline:
                    raise ImageError(f"{original}: fetch took longer than {self.total_timeout:g} s; aborted")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise ImageError(f"{original}: download failed: {e}") from e
        return bytes(buf)

    def _check_pixels(self, im: Image.Image, url: str) -> None:
        w, h = im.size
        if w * h > self.max_pixels:
            raise ImageError(f"{url}: {w}x{h} = {w * h} pixels exceeds the limit of {self.max_pixels}")

    # ---- cache -------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / hashlib.sha256(key.encode("utf-8")).hexdigest()

    def _cache_trim(self, added: int) -> None:
        """Keep the cache under ``cache_max_bytes``: past it, delete the oldest files down to 80 %."""
        if self.cache_dir is None:
            return
        with self._cache_lock:
            if self._cache_bytes is not None:
                self._cache_bytes += added
                if self._cache_bytes <= self.cache_max_bytes:
                    return
            files = sorted(self._cache_files())  # (mtime, size, path), oldest first
            total = sum(size for _, size, _ in files)
            for _, size, p in files:
                if total <= 0.8 * self.cache_max_bytes or total <= self.cache_max_bytes and self._cache_bytes is None:
                    break
                p.unlink(missing_ok=True)
                total -= size
            self._cache_bytes = total
            logger.info("image cache trimmed to %d bytes (cap %d)", total, self.cache_max_bytes)

    def _cache_files(self) -> list[tuple[float, int, Path]]:
        assert self.cache_dir is not None
        out = []
        try:
            for p in self.cache_dir.iterdir():
                if len(p.name) == 64:
                    with contextlib.suppress(OSError):  # removed meanwhile by another fetcher
                        st = p.stat()
                        out.append((st.st_mtime, st.st_size, p))
        except OSError:
            pass
        return out

    @staticmethod
    def _cache_write(path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:  # a failing cache must not fail the fetch
            logger.warning("image cache write to %s failed: %s", path, e)
