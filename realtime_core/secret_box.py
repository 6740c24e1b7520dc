"""Secrets at rest: tenants' `jwt_secret` and database passwords, sealed with DB_ENC_KEY.

Upstream encrypts with AES-128-ECB under the 16-byte DB_ENC_KEY (lib/realtime/crypto.ex),
which leaks equal plaintexts as equal ciphertexts. Here the key is stretched with SHA-256
to an AES-256-GCM key, and each value gets a random nonce: equal secrets do not look
equal, and a tampered value fails to open instead of decrypting to garbage. A sealed value
is text, `enc:v1:` + base64url(nonce ‖ ciphertext ‖ tag), so it fits the text columns it
replaces. open() passes plain text (a value written before encryption existed) through
unchanged: TenantStore seals such values when it next writes them."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["PREFIX", "SecretBox", "SecretBoxError", "is_sealed"]

PREFIX = "enc:v1:"
_NONCE = 12


class SecretBoxError(ValueError):
    """A sealed value does not open under this key (another key, or tampered)."""


class SecretBox:
    """Seals and opens text under one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("DB_ENC_KEY is empty")
        self._aead = AESGCM(hashlib.sha256(key.encode()).digest())

    def seal(self, text: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, text.encode(), None)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, value: str) -> str:
        """The text `value` seals; `value` itself when it is plain text (not sealed)."""
        if not is_sealed(value):
            return value
        data = value[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], None).decode()
        except (InvalidTag, ValueError) as exc:
            raise SecretBoxError("a sealed secret does not open with this DB_ENC_KEY") from exc


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)
