"""Sealing secrets that must wait in the database: MCP ``headers`` of background jobs.

A background job is run later, maybe by another replica, so the credentials it needs must
be stored; they are stored sealed (AES-256-GCM) under the server's secret key, never in
plaintext. Every replica of one database needs the same key (``[server] secret_key``).
"""

from __future__ import annotations

import base64
import hashlib
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SealError(Exception):
    """A sealed value could not be opened (another key, or tampered with)."""


class Sealer:
    def __init__(self, key_material: bytes) -> None:
        # any length of key material becomes a 256-bit key
        self._aead = AESGCM(hashlib.sha256(key_material).digest())

    def seal(self, value: object) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, orjson.dumps(value), b"respond")
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str) -> object:
        try:
            raw = base64.urlsafe_b64decode(token.encode())
            return orjson.loads(self._aead.decrypt(raw[:12], raw[12:], b"respond"))
        except (InvalidTag, ValueError) as exc:
            raise SealError("sealed value cannot be opened with this key") from exc
