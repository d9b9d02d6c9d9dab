"""Connections that may only reach public addresses, checked when the socket connects.

The image fetcher follows Label Studio's presign redirects to hosts nobody allow-listed (signed
cloud-storage URLs). Checking the host's DNS answer before the request leaves a gap: the name can
resolve to a public address for the check and to ``127.0.0.1`` or ``169.254.169.254`` for the
connection (DNS rebinding). :func:`public_only_session` closes it: its connections look at the peer
address of the socket they just opened, before a single request byte is sent, and refuse anything
that is not public.

One parser: :func:`parse_http_url` reads a URL with urllib3's ``parse_url`` (the parser requests and
urllib3 connect with), refuses anything two parsers could read differently (backslashes, userinfo,
control characters, ``%`` or odd numeric forms in the host, hosts that are not valid IDNA/LDH names)
and rebuilds the URL from the parsed parts; callers check the policy on that result and send exactly
its ``url``. ``http://ATTACKER\\@LS_HOST/`` (``urlsplit``: LS_HOST; urllib3: ATTACKER) is refused.

Public means :attr:`ipaddress.IPv4Address.is_global` (so 100.64.0.0/10, benchmarking, reserved and
documentation ranges are out), not multicast, and for IPv6 every IPv4 address it embeds (IPv4-mapped,
IPv4-compatible, 6to4, Teredo, NAT64 ``64:ff9b::/96``) public too.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util import parse_url

__all__ = ["HttpTarget", "UnsafeURL", "is_public", "parse_http_url", "public_only_session"]

MAX_URL_LENGTH = 8192
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPAT = ipaddress.ip_network("::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_DOTTED_QUAD = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class UnsafeURL(ValueError):
    """A URL that is not a plain, unambiguous http(s) URL; the message says why."""


@dataclass(frozen=True)
class HttpTarget:
    """A parsed http(s) URL: lower-case ``host`` (IDNA-encoded; IPv6 without brackets), ``port``
    (the scheme's default filled in) and ``url``, rebuilt from these parts (no fragment): send that."""

    scheme: str
    host: str
    port: int
    path: str
    url: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


def parse_http_url(url: str) -> HttpTarget:
    """Parse ``url`` the way urllib3 connects; raise :class:`UnsafeURL` unless it is an http(s) URL with a
    host and no userinfo, backslash, control character or ambiguous host (see the module docstring)."""
    if not isinstance(url, str):
        raise UnsafeURL(f"URL must be a string, got {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"URL longer than {MAX_URL_LENGTH} characters")
    if _BAD_CHARS.search(url):
        raise UnsafeURL("URL contains a backslash or a control character")
    try:
        p = parse_url(url)
    except (LocationParseError, UnicodeError, ValueError) as e:
        raise UnsafeURL(f"URL cannot be parsed: {e}") from None
    scheme = (p.scheme or "").lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"URL scheme {scheme or '(none)'!r} is not http(s)")
    authority = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] if "://" in url else ""
    if p.auth is not None or "@" in authority:
        raise UnsafeURL("URL carries user information ('user@host')")
    if "%" in authority or " " in authority:
        raise UnsafeURL("URL host contains '%' or a space")
    host = _check_host(p.host or "")
    port = p.port if p.port is not None else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise UnsafeURL(f"URL port {port} out of range")
    netloc = f"[{host}]" if ":" in host else host
    if p.port is not None:
        netloc += f":{p.port}"
    path = p.path or "/"
    rebuilt = f"{scheme}://{netloc}{path}" + (f"?{p.query}" if p.query is not None else "")
    return HttpTarget(scheme, host, port, path, rebuilt)


def _check_host(host: str) -> str:
    if not host:
        raise UnsafeURL("URL has no host")
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host.strip("[]").split("%", 1)[0]))
        except ValueError:
            raise UnsafeURL(f"URL host {host!r} is not an IPv6 address") from None
    host = host.lower()
    if not host.isascii():
        raise UnsafeURL(f"URL host {host!r} is not a valid IDNA name")
    if len(host) > 253:
        raise UnsafeURL("URL host longer than 253 characters")
    labels = host.removesuffix(".").split(".")
    if all(ch in "0123456789abcdefx." for ch in host) and any(lab[:1].isdigit() for lab in labels):
        # numeric forms other than a dotted quad (127.1, 0x7f000001, 2130706433, 0177.0.0.1) resolve
        # to addresses nobody wrote down; refuse them
        if not _DOTTED_QUAD.fullmatch(host):
            raise UnsafeURL(f"URL host {host!r} is not a dotted-quad IPv4 address nor a name")
        return host
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise UnsafeURL(f"URL host {host!r} has an invalid label {label!r}")
        if label.startswith("xn--"):
            try:
                label.encode().decode("idna")
            except UnicodeError:
                raise UnsafeURL(f"URL host {host!r} is not a valid IDNA name") from None
    return host


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    out = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _NAT64 or (ip in _COMPAT and int(ip) > 1):
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def is_public(address: str) -> bool:
    """True for a globally reachable unicast address (:attr:`is_global`, not multicast); for IPv6 also
    every IPv4 address it embeds must be. A ``%zone`` suffix is ignored; a non-address is not public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return all(a.is_global and not a.is_multicast for a in _embedded_ipv4(ip))
    return True


class _PublicPeerOnly:
    """Mixin for urllib3 connections: the freshly connected socket's peer must be public."""

    host: str

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        peer = sock.getpeername()[0]
        if not is_public(peer):
            sock.close()
            raise NewConnectionError(self, f"host {self.host!r} connected to non-public address {peer}; refused")
        return sock


class _PublicHTTPConnection(_PublicPeerOnly, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicPeerOnly, HTTPSConnection):
    pass


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def public_only_session() -> requests.Session:
    """A ``requests.Session`` (no proxies or netrc from the environment) whose connections refuse
    non-public peers."""
    session = requests.Session()
    session.trust_env = False
    adapter = _PublicOnlyAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
