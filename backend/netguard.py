"""Connections that may only reach public addresses, checked when the socket connects.

The image fetcher follows Label Studio's presign redirects to hosts nobody allow-listed (signed
cloud-storage URLs). Checking the host's DNS answer before the request leaves a gap: the name can
resolve to a public address for the check and to ``127.0.0.1`` or ``169.254.169.254`` for the
connection (DNS rebinding). :func:`public_only_session` closes it: its connections look at the peer
address of the socket they just opened, before a single request byte is sent, and refuse anything
that is not public.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

__all__ = ["is_public", "public_only_session"]


def is_public(address: str) -> bool:
    """False for loopback, link-local, private, multicast, unspecified and reserved addresses (IPv4
    and IPv6, IPv4-mapped IPv6 included; a ``%zone`` suffix is ignored)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast or ip.is_unspecified
                or ip.is_reserved)


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
