"""HMAC-signed object URLs with an expiry, for the backends that have no server of their own to sign them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, unquote, urlsplit

from shared.errors import StoragePermissionError, ValidationError
from shared.storage._common import validate_bucket, validate_path

__all__ = ["SignedObject", "UrlSigner"]


@dataclass(frozen=True, slots=True)
class SignedObject:
    """What a valid signed URL grants: reading ``bucket/path`` until ``expires_at``."""

    bucket: str
    path: str
    expires_at: datetime


class UrlSigner:
    """Sign ``<base>/<bucket>/<path>?expires=<unix>&token=<hmac>`` URLs and verify them.

    The token is HMAC-SHA256 over the bucket, the path and the expiry, so changing any of them, or the
    token, is detected; an expired URL is refused even when its token is right.
    """

    def __init__(self, key: bytes, base_url: str, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValidationError("The URL signing key must be at least 16 bytes", field="signing_key")
        self._key = key
        self._base = base_url.rstrip("/")
        self._clock = clock

    def _token(self, bucket: str, path: str, expires: int) -> str:
        message = f"{bucket}\n{path}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, bucket: str, path: str, expires_in: int) -> str:
        """Return a URL for ``bucket/path`` valid for ``expires_in`` seconds."""
        expires = math.ceil(self._clock()) + expires_in
        quoted = "/".join(quote(segment, safe="") for segment in path.split("/"))
        token = self._token(bucket, path, expires)
        return f"{self._base}/{quote(bucket, safe='')}/{quoted}?expires={expires}&token={token}"

    def verify(self, url: str) -> SignedObject:
        """Return what ``url`` grants; raise StoragePermissionError when it was tampered with or expired."""
        refused = "The signed URL is not valid (tampered with, or not signed by this storage); ask for a new one"
        parts = urlsplit(url)
        unsigned = url.split("?", 1)[0]
        if not unsigned.startswith(self._base + "/"):
            raise StoragePermissionError(refused)
        rest = unsigned[len(self._base) + 1 :]
        bucket_part, _, path_part = rest.partition("/")
        query = parse_qs(parts.query)
        try:
            bucket = validate_bucket(unquote(bucket_part))
            path = validate_path("/".join(unquote(segment) for segment in path_part.split("/")))
            (expires_text,) = query["expires"]
            (token,) = query["token"]
            expires = int(expires_text)
        except (KeyError, ValueError, ValidationError) as exc:
            raise StoragePermissionError(refused) from exc
        if not hmac.compare_digest(self._token(bucket, path, expires), token):
            raise StoragePermissionError(refused, bucket=bucket, path=path)
        if expires <= self._clock():
            raise StoragePermissionError(
                "The signed URL has expired; ask for a new one", bucket=bucket, path=path, status=400
            )
        return SignedObject(bucket=bucket, path=path, expires_at=datetime.fromtimestamp(expires, tz=UTC))
