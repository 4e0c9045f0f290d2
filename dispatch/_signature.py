"""Request signatures: the orchestrator signs each request it sends to an
endpoint with Ed25519, and the endpoint verifies it.

The orchestrator holds the private key, endpoints only the public key. The
header ``Dispatch-Signature: t=<unix seconds>,n=<nonce>,s=<signature>``
signs the canonical string ``METHOD\\npath\\nt\\nnonce\\nsha256(body) hex``;
see ``docs/protocol.md``.

::

    SignatureError             the request cannot be trusted; it was not run
    ├── MissingSignature       no header, or one that does not parse     (HTTP 401)
    ├── InvalidSignature       wrong key, or method, path or body changed (HTTP 403)
    ├── StaleSignature         signed too long ago, or in the future      (HTTP 403)
    └── ReplayedSignature      this exact signature was already accepted  (HTTP 403)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import ClassVar

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_HEADER = "Dispatch-Signature"
# A signature dated this far ahead of the verifier's clock is refused: clock
# skew is tolerated, signatures made to outlive their window are not.
MAX_CLOCK_SKEW = 60.0
_NONCE_SIZE = 16
_NONCE = re.compile(f"[0-9a-f]{{{2 * _NONCE_SIZE}}}")
_SIGNATURE_SIZE = 64
_RAW_KEY_SIZE = 32


class SignatureError(Exception):
    """Base class of signature failures; ``http_status`` is the answer the
    endpoint gives."""

    http_status: ClassVar[int] = 403


class MissingSignature(SignatureError):
    """The request has no signature header, or one that does not parse."""

    http_status = 401


class InvalidSignature(SignatureError):
    """The signature does not verify: another key signed it, or the method,
    path or body differ from what was signed."""


class StaleSignature(SignatureError):
    """The signature is older than the verifier's ``max_age``, or dated in the future."""


class ReplayedSignature(SignatureError):
    """The signature's nonce was already accepted: the request is a replay."""


def _canonical(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign_request(
    private_key: Ed25519PrivateKey,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The headers that sign a request of ``method`` to ``path`` (the URL
    path, without query string) with ``body``, dated ``now`` (default: the
    current time)."""
    timestamp = int(time.time() if now is None else now)
    nonce = secrets.token_hex(_NONCE_SIZE)
    signature = private_key.sign(_canonical(method, path, timestamp, nonce, body))
    encoded = base64.b64encode(signature).decode("ascii")
    return {SIGNATURE_HEADER: f"t={timestamp},n={nonce},s={encoded}"}


def _header(headers: Mapping[str, str]) -> str:
    values = [value for name, value in headers.items() if name.lower() == "dispatch-signature"]
    if not values:
        raise MissingSignature(f"no {SIGNATURE_HEADER} header")
    if len(values) > 1:
        raise MissingSignature(f"more than one {SIGNATURE_HEADER} header")
    return values[0]


def _parse(header: str) -> tuple[int, str, bytes]:
    """The timestamp, nonce and signature of a header value."""
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals or name in fields:
            raise MissingSignature(f"malformed {SIGNATURE_HEADER} header")
        fields[name] = value
    timestamp, nonce, signature = fields.get("t", ""), fields.get("n", ""), fields.get("s", "")
    # Unknown parameters are ignored, so that later versions can add some.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 15):
        raise MissingSignature(f"{SIGNATURE_HEADER}: t must be Unix seconds")
    if not _NONCE.fullmatch(nonce):
        raise MissingSignature(f"{SIGNATURE_HEADER}: n must be {2 * _NONCE_SIZE} hex digits")
    try:
        decoded = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != _SIGNATURE_SIZE:
        raise MissingSignature(f"{SIGNATURE_HEADER}: s must be a base64 Ed25519 signature")
    return int(timestamp), nonce, decoded


class Verifier:
    """Verifies the signatures of requests: made with the private key of
    ``public_key``, at most ``max_age`` seconds ago by ``clock``, and not
    seen before. Thread-safe.

    Accepted nonces are remembered until their signatures are too old to be
    accepted anyway, and at most ``max_nonces`` of them: past that cap the
    oldest are forgotten early. Either way, a signature dated no later than
    a forgotten one is refused as stale, so that no forgotten nonce can be
    replayed, even if the clock steps back.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
    ) -> None:
        if max_age <= 0 or max_nonces < 1:
            raise ValueError("max_age and max_nonces must be positive")
        self.public_key = public_key
        self.max_age = max_age
        self.clock = clock
        self.max_nonces = max_nonces
        self._lock = threading.Lock()
        self._nonces: OrderedDict[str, int] = OrderedDict()  # nonce -> timestamp, oldest first
        self._forgotten_until = -1  # the latest timestamp of a forgotten nonce

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Return if the request's signature holds; raise a
        :class:`SignatureError` subclass saying why it does not."""
        timestamp, nonce, signature = _parse(_header(headers))
        now = self.clock()
        if timestamp < now - self.max_age:
            raise StaleSignature(f"signed {now - timestamp:.0f} s ago, more than {self.max_age} s")
        if timestamp > now + MAX_CLOCK_SKEW:
            raise StaleSignature(f"signed {timestamp - now:.0f} s in the future")
        try:
            self.public_key.verify(signature, _canonical(method, path, timestamp, nonce, body))
        except _CryptographyInvalidSignature:
            raise InvalidSignature("the signature does not match the request") from None
        # Only verified nonces are recorded: a forger cannot burn the nonce
        # of a genuine request that is still on its way.
        with self._lock:
            self._forget_expired(now)
            if nonce in self._nonces:
                raise ReplayedSignature("this signature was already used")
            if timestamp <= self._forgotten_until:
                raise StaleSignature("signed no later than a signature no longer remembered")
            self._nonces[nonce] = timestamp
            if len(self._nonces) > self.max_nonces:
                self._forget_oldest()

    def _forget_expired(self, now: float) -> None:
        # Nonces arrive roughly in timestamp order: dropping from the front
        # until one is still fresh keeps the work proportional to what expires.
        oldest_fresh = now - self.max_age
        while self._nonces and next(iter(self._nonces.values())) < oldest_fresh:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, timestamp = self._nonces.popitem(last=False)
        self._forgotten_until = max(self._forgotten_until, timestamp)


# --- keys -----------------------------------------------------------------------------------


def _text(key: str | bytes, kind: str) -> str:
    if isinstance(key, bytes):
        try:
            return key.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{kind} key: expected PEM or base64 text, got binary") from None
    return key.strip()


def _raw(text: str, kind: str) -> bytes:
    """The 32 raw bytes that ``text`` holds in standard or URL-safe base64,
    with or without padding."""
    unpadded = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{kind} key: expected PEM or base64, got neither") from None
    if len(raw) != _RAW_KEY_SIZE:
        raise ValueError(
            f"{kind} key: expected base64 of {_RAW_KEY_SIZE} raw bytes, got {len(raw)} bytes"
        )
    return raw


def load_private_key(key: str | bytes) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``key``: PEM (PKCS#8), or base64 of the 32
    raw bytes. Errors never quote the key."""
    text = _text(key, "Ed25519 private")
    if text.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("Ed25519 private key: the PEM does not parse") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("Ed25519 private key: the PEM holds another kind of key")
        return loaded
    return Ed25519PrivateKey.from_private_bytes(_raw(text, "Ed25519 private"))


def load_public_key(key: str | bytes) -> Ed25519PublicKey:
    """The Ed25519 public key in ``key``: PEM (SubjectPublicKeyInfo), or
    base64 of the 32 raw bytes. Errors never quote the key."""
    text = _text(key, "Ed25519 public")
    if text.startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("Ed25519 public key: the PEM does not parse") from None
        if not isinstance(loaded, Ed25519PublicKey):
            raise ValueError("Ed25519 public key: the PEM holds another kind of key")
        return loaded
    raw = _raw(text, "Ed25519 public")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValueError("Ed25519 public key: not a valid key") from None


def generate_keypair() -> tuple[str, str]:
    """A new ``(private key, public key)`` pair as base64 of their raw bytes."""
    private_key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = private_key.private_bytes(
        raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private_key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode("ascii"), base64.b64encode(public).decode("ascii")


def public_key_text(private_key: Ed25519PrivateKey) -> str:
    """The public key of ``private_key``, as base64 of its raw bytes."""
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode("ascii")
