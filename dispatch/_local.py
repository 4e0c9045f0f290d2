"""The local state directory (``.dispatch/``): the embedded database, keys,
and the URL of the orchestrator running here.

Keys are made on first use and kept, so that a restarted application (or
``dispatch run``) resumes the coroutines it suspended before: snapshots are
sealed with the seal key, and the endpoint trusts the orchestrator's
signing key. The file is readable by its owner only.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from . import _signature, _wire


def directory() -> Path:
    """``DISPATCH_DIR``, or ``.dispatch`` in the working directory."""
    return Path(os.environ.get("DISPATCH_DIR") or ".dispatch")


DEFAULT_PORT = 4001
"""Where ``dispatch server`` serves by default."""


def api_url() -> str:
    """The orchestrator to talk to: ``DISPATCH_API_URL``, else the one that
    ``dispatch run`` or ``dispatch server`` of this directory announced
    while it runs, else ``dispatch server``'s default."""
    url = os.environ.get("DISPATCH_API_URL")
    if url:
        return url
    with contextlib.suppress(OSError):
        announced = (directory() / "api-url").read_text().strip()
        if announced:
            return announced
    return f"http://127.0.0.1:{DEFAULT_PORT}"


def announce(host: str, port: int) -> str:
    """Tell :func:`api_url` of this directory where the orchestrator of this
    process serves, until the process exits; the URL."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{host}:{port}"
    path = directory() / "api-url"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(url + "\n")
        atexit.register(_withdraw, path, url)
    return url


def _withdraw(path: Path, url: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text().strip() == url:  # (not another orchestrator's since)
            path.unlink()


def database() -> str:
    """``DISPATCH_DATABASE_URL``, else ``dispatch.db`` in :func:`directory` (made if missing)."""
    url = os.environ.get("DISPATCH_DATABASE_URL")
    if url:
        return url
    directory().mkdir(parents=True, exist_ok=True)
    return str(directory() / "dispatch.db")


@dataclass(frozen=True)
class LocalKeys:
    seal_key: bytes
    signing_key: str
    """The orchestrator's Ed25519 private key (base64)."""
    verification_key: str
    """Its public key (base64), which endpoints check signatures against."""
    api_key: str

    def seal_key_text(self) -> str:
        return base64.b64encode(self.seal_key).decode()


def keys(path: Path | None = None) -> LocalKeys:
    """The keys in ``path`` (``<directory>/keys.json``), made there if missing."""
    path = path or directory() / "keys.json"
    if path.exists():
        data = json.loads(path.read_text())
        return LocalKeys(
            seal_key=base64.b64decode(data["seal_key"]),
            signing_key=data["signing_key"],
            verification_key=data["verification_key"],
            api_key=data["api_key"],
        )
    private, public = _signature.generate_keypair()
    made = LocalKeys(
        seal_key=_wire.generate_key(),
        signing_key=private,
        verification_key=public,
        api_key=secrets.token_urlsafe(32),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "seal_key": made.seal_key_text(),
        "signing_key": made.signing_key,
        "verification_key": made.verification_key,
        "api_key": made.api_key,
    }
    # Written to a private temporary file, then linked into place: never
    # readable by others, never half-written, and when processes starting
    # together (two orchestrators on one machine) race, the first one's keys
    # are everyone's.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file)
        os.link(temporary, path)
    except FileExistsError:
        return keys(path)
    finally:
        os.unlink(temporary)
    return made
