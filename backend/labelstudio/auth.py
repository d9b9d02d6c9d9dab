"""Label Studio credentials for image downloads: a legacy token as is, or a personal access token
(a JWT refresh token) exchanged for short-lived access tokens at ``/api/token/refresh/``, refreshed
shortly before they expire and after a 401. Split from :mod:`backend.labelstudio.images`, which uses it."""

from __future__ import annotations

import threading
import time

import jwt  # PyJWT, a dependency of label-studio-sdk (which detects tokens the same way)
import requests

__all__ = ["ImageError", "LSAuth", "jwt_claims"]

_REFRESH_MARGIN_S = 30.0  # refresh an access token this long before it expires
_REFRESH_PATH = "/api/token/refresh/"


class ImageError(ValueError):
    """An image or array could not be fetched or decoded; the message names the URL."""


def jwt_claims(token: str | None) -> dict | None:
    """The claims of a JWT, decoded WITHOUT signature verification (only to tell the token kind and
    expiry, like ``label_studio_sdk.tokens.client_ext.TokensClientExt``); None for a legacy token."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    return claims if isinstance(claims, dict) else None


class LSAuth:
    """The Authorization header for LS: legacy token, or a personal access token's access token."""

    def __init__(self, token: str | None, scheme: str, session: requests.Session, timeout: float) -> None:
        self.token = token
        self.scheme = scheme
        self.session = session
        self.timeout = timeout
        claims = jwt_claims(token)
        self.kind = "legacy" if claims is None else ("access" if claims.get("token_type") == "access" else "refresh")
        self.refresh_exp = claims.get("exp") if claims else None
        self._access: str | None = None
        self._access_exp: float | None = None
        self._lock = threading.Lock()

    @property
    def refreshes(self) -> bool:
        return self.kind == "refresh"

    def header(self, ls_url: str, original: str) -> str | None:
        if not self.token:
            return None
        if self.kind == "legacy":
            return f"{self.scheme} {self.token}"
        if self.kind == "access":
            return f"Bearer {self.token}"
        return f"Bearer {self._access_token(ls_url, original)}"

    def invalidate(self, header: str) -> None:
        """A request with ``header`` got 401: drop that access token (unless another thread already did)."""
        with self._lock:
            if self._access is not None and header == f"Bearer {self._access}":
                self._access = None

    def _access_token(self, ls_url: str, original: str) -> str:
        with self._lock:
            now = time.time()
            if self._access is None or (self._access_exp is not None and self._access_exp - _REFRESH_MARGIN_S < now):
                self._access = self._refresh(ls_url, original, now)
                exp = (jwt_claims(self._access) or {}).get("exp")
                self._access_exp = float(exp) if isinstance(exp, int | float) else None
            return self._access

    def _refresh(self, ls_url: str, original: str, now: float) -> str:
        if isinstance(self.refresh_exp, int | float) and self.refresh_exp < now:
            raise ImageError(f"{original}: the Label Studio personal access token has expired; create a new one")
        url = ls_url + _REFRESH_PATH
        try:
            resp = self.session.post(url, json={"refresh": self.token}, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as e:
            raise ImageError(f"{original}: personal access token refresh at {url} failed: {e}") from e
        with resp:
            if resp.status_code != 200:
                raise ImageError(f"{original}: personal access token refresh at {url} failed: HTTP {resp.status_code}")
            try:
                access = resp.json().get("access")
            except (ValueError, AttributeError):
                access = None
        if not isinstance(access, str) or not access:
            raise ImageError(f"{original}: personal access token refresh at {url} returned no access token")
        return access
