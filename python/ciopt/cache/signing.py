"""HMAC signatures on ActionCache entries in the shared cache.

Threat model: anyone who can write to the shared cache (a CI job of a fork, a compromised
runner, a misconfigured proxy) could otherwise store a *passing* result under the key of a
test that fails, and every later run would believe it. With `cache.remote.signing_key_env`
set, writers sign each entry with the secret from that environment variable, and readers
refuse unsigned or badly signed entries (a miss, counted). Runners that only read (pull
requests from forks, `read_only: true`) are not given the secret, so even a compromised one
cannot mint entries others accept. The signature covers the ActionKey too, so a valid entry
cannot be replayed under another key. Blobs need no signature: they are verified against
their digest, and a signed entry names the digests of everything it points to.
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"ciopt-sig1\0"
_MAC_LEN = hashlib.sha256().digest_size


class SignatureError(Exception):
    """An entry is unsigned or its signature does not verify."""


class Signer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        self._secret = secret

    def _mac(self, key: str, payload: bytes) -> bytes:
        return hmac.new(self._secret, key.encode() + b"\0" + payload, hashlib.sha256).digest()

    def sign(self, key: str, payload: bytes) -> bytes:
        return MAGIC + self._mac(key, payload) + payload

    def verify(self, key: str, entry: bytes) -> bytes:
        """The payload of a correctly signed entry; SignatureError otherwise."""
        if not entry.startswith(MAGIC) or len(entry) < len(MAGIC) + _MAC_LEN:
            raise SignatureError("entry is not signed")
        mac = entry[len(MAGIC):len(MAGIC) + _MAC_LEN]
        payload = entry[len(MAGIC) + _MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(key, payload)):
            raise SignatureError("bad signature")
        return payload


def unwrap_unverified(entry: bytes) -> bytes:
    """A reader without the secret (signing off) takes signed entries' payloads as they are."""
    if entry.startswith(MAGIC) and len(entry) >= len(MAGIC) + _MAC_LEN:
        return entry[len(MAGIC) + _MAC_LEN:]
    return entry


__all__ = ["Signer", "SignatureError", "unwrap_unverified"]
