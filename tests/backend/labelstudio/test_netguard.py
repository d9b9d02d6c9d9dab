"""URL parsing and address checks of :mod:`backend.labelstudio.netguard`, and the fetcher's use of them against real
local servers: one URL parser decides both the policy and the connection (defect: a URL that
``urlsplit`` reads as the LS host while urllib3 connects elsewhere took the LS token along)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.labelstudio.images import ImageError, ImageFetcher
from backend.labelstudio.netguard import UnsafeURL, is_public, parse_http_url
from tests.backend.labelstudio.test_images import TOKEN, Server, _png


@pytest.fixture
def ls() -> Server:
    s = Server("127.0.0.1")
    yield s
    s.close()


@pytest.fixture
def attacker() -> Server:
    s = Server("127.0.0.3")
    yield s
    s.close()


def _hostport(server: Server) -> str:
    return server.url.split("://", 1)[1]


def _tricks(ls: Server, attacker: Server) -> list[str]:
    a, h = _hostport(attacker), _hostport(ls)
    return [
        f"http://{a}\\@{h}/data/upload/x.png",          # urlsplit: LS; urllib3: attacker
        f"http://{a}\\\\@{h}/data/upload/x.png",
        f"http://{h}@{a}/data/upload/x.png",            # userinfo
        f"http://user:pw@{h}/data/upload/x.png",
        f"http://{h}\t@{a}/x.png",
        f"http://{h}\n/x.png",
        f"http://{h}/data\\upload/x.png",
        f"http://{a}%5C@{h}/x.png",
        f"http:\\\\{a}/x.png",
        f"http://{h}\x00.{a}/x.png",
    ]


def test_url_tricks_never_reach_another_host_nor_carry_the_token(ls: Server, attacker: Server) -> None:
    attacker.routes["/data/upload/x.png"] = (200, {}, _png(np.zeros((4, 4, 3), np.uint8)))
    fetcher = ImageFetcher(ls.url, TOKEN, timeout=3.0)
    for url in _tricks(ls, attacker):
        with pytest.raises(ImageError):
            fetcher.fetch_bytes(url)
    assert attacker.requests == []
    assert all(auth is None for _, auth in ls.requests)


def test_allow_listed_host_trick_does_not_reach_loopback(attacker: Server) -> None:
    """``MTAL_ALLOW_HOSTS=img.example.com``: ``http://127.0.0.3:P\\@img.example.com/`` must not connect
    to 127.0.0.3 (the Redis-on-loopback case)."""
    fetcher = ImageFetcher(None, None, allow_hosts=["img.example.com"], timeout=2.0)
    with pytest.raises(ImageError):
        fetcher.fetch_bytes(f"http://{_hostport(attacker)}\\@img.example.com/x.png")
    assert attacker.requests == []


def test_presign_redirect_to_metadata_trick_refused(ls: Server) -> None:
    # the presign endpoint (token) redirects to a URL urlsplit would call the LS host
    ls.routes["/tasks/1/presign/?fileuri=czM6Ly9iL2sucG5n"] = (
        302, {"Location": f"http://169.254.169.254\\@{_hostport(ls)}/latest/meta-data"}, b"")
    with pytest.raises(ImageError):
        ImageFetcher(ls.url, TOKEN, timeout=2.0).fetch_bytes("s3://b/k.png", task_id=1)


@pytest.mark.parametrize("url", [
    "http://a\\@b/x", "http://u@b/x", "http://u:p@b/x", "http://b/\x7f", "http://b/\x00", "http://b\r\n/x",
    "ftp://b/x", "file:///etc/passwd", "http:///x", "http://[::1/x", "http://b:99999/x", "http://b:0/x",
    "http://127.1/x", "http://0x7f000001/x", "http://2130706433/x", "http://0177.0.0.1/x",
    "http://ex%41mple.com/x", "http://a..b/x", "http://-a.b/x", "http://" + "a" * 300 + "/x",
    "http://\u0430\u0440\u0440\u04cf\u0435.com\uff0e/x", "http://xn--/x", "http://b/" + "x" * 9000, 42, None,
])
def test_parse_http_url_refuses(url: object) -> None:
    with pytest.raises(UnsafeURL):
        parse_http_url(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "host", "port", "rebuilt"), [
    ("http://LS:8080/data/upload/1/a.png?x=1#f", "ls", 8080, "http://ls:8080/data/upload/1/a.png?x=1"),
    ("https://img.example.com/a b.png", "img.example.com", 443, "https://img.example.com/a%20b.png"),
    ("http://[2606:2800:220:1::1]/x", "2606:2800:220:1::1", 80, "http://[2606:2800:220:1::1]/x"),
    ("http://bücher.de/x", "xn--bcher-kva.de", 80, "http://xn--bcher-kva.de/x"),
    ("http://10.0.0.7:9000", "10.0.0.7", 9000, "http://10.0.0.7:9000/"),
])
def test_parse_http_url_accepts_and_rebuilds(url: str, host: str, port: int, rebuilt: str) -> None:
    t = parse_http_url(url)
    assert (t.host, t.port, t.url) == (host, port, rebuilt)


@pytest.mark.parametrize(("address", "public"), [
    ("100.64.0.1", False), ("100.100.100.200", False),  # shared address space (a cloud metadata address)
    ("2002:7f00:1::", False), ("2002:a9fe:a9fe::1", False),  # 6to4 wrapping 127.0.0.1 / 169.254.169.254
    ("2002:808:808::1", True), ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", True),  # NAT64
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo
    ("::7f00:1", False), ("198.18.0.1", False), ("192.0.0.170", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("224.0.1.1", False), ("ff0e::1", False), ("fc00::1", False),
    ("8.8.8.8", True), ("2606:4700::1111", True), ("not-an-ip", False),
])
def test_is_public_uses_is_global_and_unwraps_embedded_ipv4(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_cache_capped_and_policy_checked_before_the_cache(ls: Server, tmp_path) -> None:
    png = _png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for i in range(10):
        ls.routes[f"/data/upload/{i}.png"] = (200, {}, png)
    fetcher = ImageFetcher(ls.url, TOKEN, cache_dir=tmp_path, cache_max_bytes=4 * len(png))
    for i in range(10):
        fetcher.fetch_bytes(f"/data/upload/{i}.png")
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 4 * len(png)
    # a URL cached while its host was allow-listed is refused once it is not
    other = "http://img.example.com/a.png"
    ImageFetcher(ls.url, TOKEN, cache_dir=tmp_path)._cache_write(fetcher._cache_path(other), png)
    with pytest.raises(ImageError, match="allowed hosts"):
        ImageFetcher(ls.url, TOKEN, cache_dir=tmp_path).fetch_bytes(other)


@pytest.mark.parametrize("data", [b"%!PS-Adobe-3.0 EPSF-3.0\n", b"8BPS\x00\x01", b"\x00\x00\x01\x00", b"<svg/>",
                                  b"P6\n1 1\n255\n\x00\x00\x00", b"\x00\x00\x00\x0cjP  "])
def test_only_allowed_formats_reach_pil(ls: Server, data: bytes) -> None:
    ls.routes["/data/upload/x.img"] = (200, {}, data)
    with pytest.raises(ImageError, match="not an allowed file format"):
        ImageFetcher(ls.url, TOKEN).fetch_image("/data/upload/x.img")


def test_total_deadline_per_fetch(ls: Server) -> None:
    import time as _time

    def slow(handler):  # noqa: ANN001 - http.server handler
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(40):
            handler.wfile.write(b"\x89" * 100)
            handler.wfile.flush()
            _time.sleep(0.1)
        return 200, {}, b""

    ls.routes["/data/upload/slow.png"] = (200, {}, slow)
    t0 = _time.monotonic()
    with pytest.raises(ImageError):
        ImageFetcher(ls.url, TOKEN, timeout=2.0, total_timeout=1.0).fetch_bytes("/data/upload/slow.png")
    assert _time.monotonic() - t0 < 2.5
