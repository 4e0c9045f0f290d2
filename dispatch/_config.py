"""Configuration from the environment, for the endpoint and the client.

- ``DISPATCH_API_URL``: the orchestrator's API, where calls are sent.
- ``DISPATCH_API_KEY``: the key the client presents to that API
  (``Authorization: Bearer``).
- ``DISPATCH_ENDPOINT_URL``: the URL at which the orchestrator reaches this application.
- ``DISPATCH_ENDPOINT_ADDR``: ``host:port`` that ``dispatch.run`` serves the endpoint on
  (default ``127.0.0.1:8000``).
- ``DISPATCH_VERIFICATION_KEY``: the orchestrator's Ed25519 public key (base64 or PEM);
  every request to the endpoint must carry its signature.
- ``DISPATCH_SEAL_KEY``: base64 key(s) of at least 32 bytes, comma-separated, sealing
  pickled values and snapshots (the first seals, all verify: rotation).
- ``DISPATCH_INSECURE``: ``1`` to run without a verification key (local development
  only; logged loudly).
- ``DISPATCH_WHERE``: ``off`` (or ``0``, ``false``, ``no``) to stop sending, with each
  suspended coroutine's snapshot, the readable description of where it waits (its
  frames, lines and summarized locals; see ``dispatch._where``). On by default.
- ``DISPATCH_REDACT``: the locals shown as ``<redacted>`` in that description:
  case-insensitive shell patterns of their names separated by ``|`` (default
  ``*token*|*secret*|*password*|*api_key*``; the value replaces the default).

Secrets are read here and never logged.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass

from . import _signature, _wire
from ._where import DEFAULT_REDACT

logger = logging.getLogger("dispatch")


class ConfigurationError(ValueError):
    """The configuration is missing or malformed; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    api_url: str | None
    api_key: str | None
    endpoint_url: str | None
    endpoint_addr: str
    verification_key: str | None
    seal_keys: tuple[bytes, ...]
    insecure: bool
    redact: str = DEFAULT_REDACT
    where: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        seal = os.environ.get("DISPATCH_SEAL_KEY", "")
        return cls(
            api_url=os.environ.get("DISPATCH_API_URL") or None,
            api_key=os.environ.get("DISPATCH_API_KEY") or None,
            endpoint_url=os.environ.get("DISPATCH_ENDPOINT_URL") or None,
            endpoint_addr=os.environ.get("DISPATCH_ENDPOINT_ADDR") or "127.0.0.1:8000",
            verification_key=os.environ.get("DISPATCH_VERIFICATION_KEY") or None,
            seal_keys=parse_seal_keys(seal) if seal else (),
            insecure=os.environ.get("DISPATCH_INSECURE", "").lower() in ("1", "true", "yes"),
            redact=os.environ.get("DISPATCH_REDACT") or DEFAULT_REDACT,
            where=os.environ.get("DISPATCH_WHERE", "").strip().lower()
            not in ("off", "0", "false", "no"),
        )


def parse_seal_keys(text: str) -> tuple[bytes, ...]:
    keys = []
    for number, part in enumerate(text.split(","), 1):
        part = part.strip()
        try:
            key = base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_")
        except (binascii.Error, ValueError):
            key = b""
        if len(key) < 32:
            raise ConfigurationError(
                f"DISPATCH_SEAL_KEY: key {number} is not base64 of at least 32 bytes"
            )
        keys.append(key)
    return tuple(keys)


_process_seal_key: bytes | None = None


def sealer(settings: Settings) -> _wire.Sealer:
    """The sealer of the configured keys; in insecure mode without keys, one
    made for this process (snapshots then only resume in this process)."""
    global _process_seal_key
    if settings.seal_keys:
        return _wire.Sealer(list(settings.seal_keys))
    if not settings.insecure:
        raise ConfigurationError(
            "no seal key: set DISPATCH_SEAL_KEY to the base64 of a random 32-byte key shared "
            "by every replica of this application (python -c 'import base64, secrets; "
            "print(base64.b64encode(secrets.token_bytes(32)).decode())'), or DISPATCH_INSECURE=1 "
            "for local development"
        )
    if _process_seal_key is None:
        _process_seal_key = _wire.generate_key()
        logger.warning(
            "dispatch: INSECURE MODE: no DISPATCH_SEAL_KEY, sealing with a key made for this "
            "process only; suspended coroutines will not resume in any other process"
        )
    return _wire.Sealer([_process_seal_key])


def verifier(settings: Settings, key: str | None = None) -> _signature.Verifier | None:
    """The verifier of the orchestrator's signatures, or None in insecure mode."""
    key = key or settings.verification_key
    if key:
        return _signature.Verifier(_signature.load_public_key(key))
    if not settings.insecure:
        raise ConfigurationError(
            "no verification key: set DISPATCH_VERIFICATION_KEY to the orchestrator's public key, "
            "so that the endpoint only runs requests the orchestrator signed, or "
            "DISPATCH_INSECURE=1 for local development"
        )
    logger.warning(
        "dispatch: INSECURE MODE: the endpoint does not verify request signatures; anyone who "
        "can reach it can run its functions. Never use this outside local development."
    )
    return None
