"""Write-key lookup in constant time with respect to the key's content."""

from __future__ import annotations

import base64
import binascii
import hmac


class KeyRing:
    """Maps write keys to projects. Every lookup compares against every key with
    `hmac.compare_digest`, so timing reveals neither a key's prefix nor which key matched."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._entries = [(key.encode(), project) for key, project in keys.items()]

    def project_for(self, presented: str | None) -> str | None:
        if not presented:
            return None
        candidate = presented.encode()
        found: str | None = None
        for key, project in self._entries:
            if hmac.compare_digest(key, candidate):
                found = project
        return found


def key_from_authorization(header: str | None) -> str | None:
    """`Bearer <key>`, or HTTP Basic with the key as user name (Segment's convention)."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None
