"""ImageFetcher against real local HTTP servers (one plays Label Studio, one a storage host)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
import numpy as np
import pytest
from PIL import Image

from backend.labelstudio.images import ImageError, ImageFetcher
from backend.labelstudio.netguard import is_public

TOKEN = "secret-token"


def _png(arr: np.ndarray, mode: str | None = None, exif_orientation: int | None = None) -> bytes:
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, format="JPEG" if im.mode == "RGB" else "PNG", exif=exif, quality=100)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """A tiny HTTP server: ``routes`` maps a path (with query) to (status, headers, body)."""

    def __init__(self, host: str) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.post_routes: dict[str, tuple[int, dict[str, str], object]] = {}  # path -> (status, headers, fn(body))
        self.posts: list[tuple[str, bytes]] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                srv.requests.append((self.path, self.headers.get("Authorization")))
                status, headers, body = srv.routes.get(self.path, (404, {}, b"not found"))
                if callable(body):
                    status, headers, body = body(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers and not headers.get("X-No-Length"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                srv.posts.append((self.path, body))
                status, headers, out = srv.post_routes.get(self.path, (404, {}, lambda _b: b"not found"))
                data = out(body)
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ls() -> Iterator[Server]:
    s = Server("127.0.0.1")
    yield s
    s.close()


@pytest.fixture
def storage() -> Iterator[Server]:
    s = Server("127.0.0.2")
    yield s
    s.close()


def _fetcher(ls: Server, **kw) -> ImageFetcher:
    return ImageFetcher(ls.url, TOKEN, timeout=5.0, **kw)


def test_upload_url_gets_token_and_odd_size(ls):
    img = np.random.default_rng(0).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    ls.routes["/data/upload/1/a.png"] = (200, {"Content-Type": "image/png"}, _png(img))
    out = _fetcher(ls).fetch_image("/data/upload/1/a.png")
    assert out.dtype == np.uint8 and out.shape == (333, 517, 3)
    np.testing.assert_array_equal(out, img)
    assert ls.requests == [("/data/upload/1/a.png", f"Token {TOKEN}")]


def test_local_files_and_absolute_ls_url(ls):
    img = np.full((5, 7, 3), 9, np.uint8)
    ls.routes["/data/local-files/?d=imgs/x.png"] = (200, {}, _png(img))
    f = _fetcher(ls)
    assert f.fetch_image("/data/local-files/?d=imgs/x.png").shape == (5, 7, 3)
    assert f.fetch_image(ls.url + "/data/local-files/?d=imgs/x.png").shape == (5, 7, 3)
    assert [a for _, a in ls.requests] == [f"Token {TOKEN}"] * 2


def test_grayscale_rgba_and_16bit_are_converted(ls):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgba = np.dstack([np.full((3, 4, 3), 50, np.uint8), np.zeros((3, 4), np.uint8)])
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    ls.routes["/g.png"] = (200, {}, _png(gray))
    ls.routes["/a.png"] = (200, {}, _png(rgba))
    ls.routes["/i16.png"] = (200, {}, _png(g16))
    f = _fetcher(ls)
    g = f.fetch_image("/g.png")
    assert g.shape == (3, 4, 3) and (g == gray[:, :, None]).all()
    a = f.fetch_image("/a.png")
    assert a.shape == (3, 4, 3) and (a == 50).all()
    i = f.fetch_image("/i16.png")
    assert i.shape == (3, 4, 3) and i.dtype == np.uint8 and i[0, 0, 0] == 0 and i[-1, -1, 0] == 55000 // 257


def test_exif_orientation_applied(ls):
    img = np.zeros((4, 6, 3), np.uint8)
    ls.routes["/rot.jpg"] = (200, {}, _png(img, exif_orientation=6))  # rotate 90°: 4x6 -> 6x4
    assert _fetcher(ls).fetch_image("/rot.jpg").shape == (6, 4, 3)


def test_same_server_refused_when_not_ls_nor_allowed(ls):
    ls.routes["/x.png"] = (200, {}, _png(np.zeros((2, 2, 3), np.uint8)))
    other = ImageFetcher("http://ls.example.invalid:8080", TOKEN)
    with pytest.raises(ImageError, match=r"x\.png"):
        other.fetch_image(ls.url + "/x.png")
    assert ls.requests == []
    allowed = ImageFetcher("http://ls.example.invalid:8080", TOKEN, allow_hosts=["127.0.0.1"])
    assert allowed.fetch_image(ls.url + "/x.png").shape == (2, 2, 3)
    assert ls.requests == [("/x.png", None)]  # allow-listed host: no token


@pytest.mark.parametrize("url", ["file:///etc/passwd", "data:image/png;base64,AAAA", "ftp://h/x.png", "//h/x.png",
                                 "x.png"])
def test_other_schemes_refused(ls, url):
    with pytest.raises(ImageError, match="not allowed|refused|neither"):
        _fetcher(ls).fetch_image(url)
    assert ls.requests == []


def test_private_address_refused_for_presigned_redirect(ls):
    # LS presign redirecting to a loopback host that is not the LS host and not allow-listed
    ls.routes["/tasks/1/presign/?fileuri=" + base64.urlsafe_b64encode(b"s3://b/k.png").decode()] = (
        303, {"Location": "http://127.0.0.3:1/signed"}, b"")
    with pytest.raises(ImageError, match="non-public address 127.0.0.3"):
        _fetcher(ls).fetch_image("s3://b/k.png", task_id=1)


def test_dns_rebinding_after_the_check_is_refused_at_connect(ls, storage, monkeypatch):
    """The presigned host resolves to a public address for the check, then to the storage server on
    127.0.0.2 for the connection: the connected peer is checked, and no request reaches the server."""
    storage.routes["/signed"] = (200, {}, _png(np.zeros((2, 2, 3), np.uint8)))
    port = int(storage.url.rsplit(":", 1)[1])
    ls.routes["/tasks/1/presign/?fileuri=" + base64.urlsafe_b64encode(b"s3://b/k.png").decode()] = (
        303, {"Location": f"http://rebind.example:{port}/signed"}, b"")
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"])  # the first answer is public, every later one internal

    def rebinding(host, *args, **kwargs):
        if host != "rebind.example":
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (next(answers, "127.0.0.2"), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(ImageError, match="non-public address 127.0.0.2"):
        _fetcher(ls).fetch_image("s3://b/k.png", task_id=1)
    assert storage.requests == []


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.216.34", True), ("2606:2800:220:1::1", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("169.254.169.254", False), ("::1", False), ("::ffff:127.0.0.1", False), ("fe80::1%eth0", False),
    ("0.0.0.0", False), ("224.0.0.1", False),
])
def test_is_public(address, public):
    assert is_public(address) is public


def test_redirect_rechecked(ls, storage):
    storage.routes["/img.png"] = (200, {}, _png(np.zeros((2, 2, 3), np.uint8)))
    ls.routes["/data/upload/r.png"] = (302, {"Location": storage.url + "/img.png"}, b"")
    ls.routes["/data/upload/f.png"] = (302, {"Location": "file:///etc/passwd"}, b"")
    with pytest.raises(ImageError, match="neither the Label Studio host"):
        _fetcher(ls).fetch_image("/data/upload/r.png")
    with pytest.raises(ImageError, match="refused URL"):
        _fetcher(ls).fetch_image("/data/upload/f.png")
    assert storage.requests == []
    assert _fetcher(ls, allow_hosts=["127.0.0.2"]).fetch_image("/data/upload/r.png").shape == (2, 2, 3)
    assert storage.requests == [("/img.png", None)]


def test_presign_flow(ls, storage):
    uri = "s3://bucket/dir/ü photo.png"
    img = np.full((6, 5, 3), 77, np.uint8)
    storage.routes["/signed/photo.png?X-Sig=abc"] = (200, {}, _png(img))

    def presign(handler):
        q = parse_qs(urlsplit(handler.path).query)
        assert base64.urlsafe_b64decode(q["fileuri"][0]).decode() == uri
        return 303, {"Location": storage.url + "/signed/photo.png?X-Sig=abc"}, b""

    path = f"/tasks/42/presign/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"
    ls.routes[path] = (0, {}, presign)
    out = _fetcher(ls, allow_hosts=["127.0.0.2"]).fetch_image(uri, task_id=42)
    np.testing.assert_array_equal(out, img)
    assert ls.requests == [(path, f"Token {TOKEN}")]
    assert storage.requests == [("/signed/photo.png?X-Sig=abc", None)]  # token never leaves LS
    with pytest.raises(ImageError, match="task id"):
        _fetcher(ls).fetch_image(uri)


def test_size_limits(ls):
    big = _png(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ls.routes["/big.png"] = (200, {}, big)
    ls.routes["/nolen.png"] = (200, {"X-No-Length": "1", "Connection": "close"}, big)
    with pytest.raises(ImageError, match="exceeds the limit"):
        _fetcher(ls, max_bytes=1000).fetch_image("/big.png")
    with pytest.raises(ImageError, match="download aborted"):
        _fetcher(ls, max_bytes=1000).fetch_image("/nolen.png")
    with pytest.raises(ImageError, match=r"64x64 = 4096 pixels exceeds"):
        _fetcher(ls, max_pixels=4000).fetch_image("/big.png")
    assert _fetcher(ls, max_pixels=4096).fetch_image("/big.png").shape == (64, 64, 3)


def test_http_errors_and_garbage(ls):
    ls.routes["/junk.png"] = (200, {}, b"not an image")
    with pytest.raises(ImageError, match=r"/junk\.png: cannot decode"):
        _fetcher(ls).fetch_image("/junk.png")
    with pytest.raises(ImageError, match="HTTP 404"):
        _fetcher(ls).fetch_image("/missing.png")
    with pytest.raises(ImageError, match="Label Studio URL"):
        ImageFetcher(None, None).fetch_image("/data/upload/x.png")


def test_cache_hit_does_no_http(ls, tmp_path):
    ls.routes["/data/upload/c.png"] = (200, {}, _png(np.full((3, 3, 3), 5, np.uint8)))
    a = _fetcher(ls, cache_dir=tmp_path).fetch_image("/data/upload/c.png")
    b = _fetcher(ls, cache_dir=tmp_path).fetch_image("/data/upload/c.png")  # a fresh fetcher, same cache
    np.testing.assert_array_equal(a, b)
    assert len(ls.requests) == 1
    files = [p for p in tmp_path.iterdir()]
    assert len(files) == 1 and len(files[0].name) == 64 and not files[0].name.startswith(".tmp")


def test_fetch_array_npy_and_depth_png(ls):
    arr = np.random.default_rng(2).random((5, 6, 3)).astype(np.float64)
    buf = io.BytesIO()
    np.save(buf, arr)
    ls.routes["/n.npy"] = (200, {}, buf.getvalue())
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    ls.routes["/d.png"] = (200, {}, _png(mm))
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    ls.routes["/pickle.npy"] = (200, {}, obj.getvalue())
    f = _fetcher(ls)
    got = f.fetch_array("/n.npy")
    assert got.dtype == np.float32 and np.allclose(got, arr)
    depth = f.fetch_array("/d.png")
    assert depth.dtype == np.float32 and np.allclose(depth, [[0, 1.0], [2.5, 65.535]])
    with pytest.raises(ImageError, match=r"pickle\.npy"):
        f.fetch_array("/pickle.npy")


def test_fetch_array_rgb_normals(ls):
    rgb = np.array([[[255, 128, 0], [0, 0, 0]]], np.uint8)
    ls.routes["/nrm.png"] = (200, {}, _png(rgb))
    n = _fetcher(ls).fetch_array("/nrm.png")
    assert n.shape == (1, 2, 3)
    np.testing.assert_allclose(n[0, 0], [1.0, 128 / 127.5 - 1, -1.0], atol=1e-6)
    assert (n[0, 1] == 0).all()  # black = invalid


# ---- personal access tokens (JWT refresh token -> short-lived Bearer access token) ----------------
def _jwt(token_type: str, exp_in: float, n: int = 0) -> str:
    return jwt.encode({"token_type": token_type, "exp": int(time.time() + exp_in), "jti": str(n)}, "k" * 32, "HS256")


class FakeTokenLS:
    """Mimics LS 1.23: POST /api/token/refresh/ {"refresh": PAT} -> {"access": <new JWT>}; the upload
    path answers 401 unless sent ``Bearer <the latest access token>``."""

    def __init__(self, ls: Server, pat: str, access_exp_in: float = 300.0) -> None:
        self.pat, self.access, self.n = pat, None, 0
        img = _png(np.full((3, 4, 3), 9, np.uint8))
        ls.post_routes["/api/token/refresh/"] = (200, {"Content-Type": "application/json"}, self.refresh)
        ls.routes["/data/upload/p.png"] = (0, {}, lambda h: self.serve(h, img))
        self.access_exp_in = access_exp_in

    def refresh(self, body: bytes) -> bytes:
        if json.loads(body).get("refresh") != self.pat:
            return json.dumps({"detail": "bad token"}).encode()
        self.n += 1
        self.access = _jwt("access", self.access_exp_in, self.n)
        return json.dumps({"access": self.access}).encode()

    def serve(self, handler, img: bytes):
        if self.access is not None and handler.headers.get("Authorization") == f"Bearer {self.access}":
            return 200, {}, img
        return 401, {}, b"unauthorized"


def test_personal_access_token_refreshed_cached_and_retried(ls):
    pat = _jwt("refresh", 3600)
    fake = FakeTokenLS(ls, pat)
    f = ImageFetcher(ls.url, pat, timeout=5.0)
    assert f.fetch_image("/data/upload/p.png").shape == (3, 4, 3)
    assert f.fetch_image("/data/upload/p.png").shape == (3, 4, 3)
    assert fake.n == 1  # access token cached
    assert [json.loads(b) for _, b in ls.posts] == [{"refresh": pat}]
    assert ls.requests[-1] == ("/data/upload/p.png", f"Bearer {fake.access}")
    old, fake.access = fake.access, "revoked"  # server-side expiry/revocation: 401 -> refresh once -> retry
    assert f.fetch_image("/data/upload/p.png").shape == (3, 4, 3)
    assert fake.n == 2 and [a for _, a in ls.requests[-2:]] == [f"Bearer {old}", f"Bearer {fake.access}"]


def test_access_token_refreshed_before_expiry(ls):
    pat = _jwt("refresh", 3600)
    fake = FakeTokenLS(ls, pat, access_exp_in=10.0)  # inside the 30 s margin: refreshed every time
    f = ImageFetcher(ls.url, pat, timeout=5.0)
    for _ in range(3):
        f.fetch_image("/data/upload/p.png")
    assert fake.n == 3
    assert all(a == "Bearer " + a[7:] and a[7:].count(".") == 2 for _, a in ls.requests)
    assert len(ls.requests) == 3  # no 401 round trips


def test_personal_access_token_errors(ls):
    FakeTokenLS(ls, _jwt("refresh", 3600))
    with pytest.raises(ImageError, match=r"p\.png.*refresh.*HTTP 404"):
        ImageFetcher(ls.url + "/sub", _jwt("refresh", 3600), timeout=5.0).fetch_image("/data/upload/p.png")
    with pytest.raises(ImageError, match="no access token"):  # wrong PAT: the fake answers without "access"
        ImageFetcher(ls.url, _jwt("refresh", 3600, 7), timeout=5.0).fetch_image("/data/upload/p.png")
    with pytest.raises(ImageError, match="expired"):
        ImageFetcher(ls.url, _jwt("refresh", -5), timeout=5.0).fetch_image("/data/upload/p.png")
    assert not any(path == "/data/upload/p.png" and auth and "refresh" in auth for path, auth in ls.requests)


def test_token_kinds_and_legacy_unchanged(ls):
    ls.routes["/data/upload/a.png"] = (200, {}, _png(np.zeros((2, 2, 3), np.uint8)))
    access = _jwt("access", 300)
    for token, want in [(TOKEN, f"Token {TOKEN}"), ("a.b.c", "Token a.b.c"), (access, f"Bearer {access}")]:
        ImageFetcher(ls.url, token, timeout=5.0).fetch_image("/data/upload/a.png")
        assert ls.requests[-1] == ("/data/upload/a.png", want)
    assert ls.posts == []  # neither a legacy token nor an access token is refreshed


def test_personal_access_token_not_sent_to_storage(ls, storage):
    pat = _jwt("refresh", 3600)
    fake = FakeTokenLS(ls, pat)
    storage.routes["/img.png"] = (200, {}, _png(np.zeros((2, 2, 3), np.uint8)))
    ls.routes["/data/upload/r.png"] = (302, {"Location": storage.url + "/img.png"}, b"")
    ImageFetcher(ls.url, pat, allow_hosts=["127.0.0.2"], timeout=5.0).fetch_image("/data/upload/r.png")
    assert ls.requests == [("/data/upload/r.png", f"Bearer {fake.access}")]
    assert storage.requests == [("/img.png", None)]
