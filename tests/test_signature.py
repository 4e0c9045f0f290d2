"""Request signatures: the orchestrator signs, the endpoint verifies."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dispatch._signature import (
    SIGNATURE_HEADER,
    InvalidSignature,
    MissingSignature,
    ReplayedSignature,
    SignatureError,
    StaleSignature,
    Verifier,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_request,
)

NOW = 1_700_000_000.0
PATH = "/dispatch/run"
BODY = b"\x81\xa1v\x01"
PRIVATE_KEY = Ed25519PrivateKey.generate()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> Verifier:
    return Verifier(PRIVATE_KEY.public_key(), clock=clock)


def signed(body: bytes = BODY, now: float = NOW, method: str = "POST") -> dict[str, str]:
    return sign_request(PRIVATE_KEY, method, PATH, body, now=now)


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_header_format_and_canonical_string() -> None:
    headers = signed()
    assert list(headers) == [SIGNATURE_HEADER] == ["Dispatch-Signature"]
    match = re.fullmatch(
        r"t=(\d+),n=([0-9a-f]{32}),s=([A-Za-z0-9+/]{86}==)", headers[SIGNATURE_HEADER]
    )
    assert match is not None
    timestamp, nonce, signature = match.groups()
    assert timestamp == str(int(NOW))
    canonical = f"POST\n{PATH}\n{timestamp}\n{nonce}\n{hashlib.sha256(BODY).hexdigest()}"
    PRIVATE_KEY.public_key().verify(base64.b64decode(signature), canonical.encode())
    assert signed()[SIGNATURE_HEADER] != headers[SIGNATURE_HEADER]  # a fresh nonce each time


def test_valid_signature_verifies(verifier: Verifier) -> None:
    verifier.verify("POST", PATH, signed(), BODY)
    verifier.verify("post", PATH, signed(method="post"), BODY)  # the method is upper-cased
    verifier.verify("POST", PATH, {"dispatch-signature": signed()[SIGNATURE_HEADER]}, BODY)
    verifier.verify("POST", PATH, {"DISPATCH-SIGNATURE": signed()[SIGNATURE_HEADER]}, BODY)
    verifier.verify("POST", PATH, signed(b""), b"")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", PATH, BODY + b"\x00"),
        ("POST", PATH, b""),
        ("POST", "/dispatch/run/", BODY),
        ("POST", "/other", BODY),
        ("PUT", PATH, BODY),
    ],
)
def test_tampered_request_is_invalid(
    verifier: Verifier, method: str, path: str, body: bytes
) -> None:
    with pytest.raises(InvalidSignature) as caught:
        verifier.verify(method, path, signed(), body)
    assert caught.value.http_status == 403


def test_tampered_header_is_invalid(verifier: Verifier) -> None:
    header = signed()[SIGNATURE_HEADER]
    other_nonce = re.sub(r"n=[0-9a-f]", "n=f" if "n=0" in header else "n=0", header)
    with pytest.raises(InvalidSignature):
        verifier.verify("POST", PATH, {SIGNATURE_HEADER: other_nonce}, BODY)
    other_time = header.replace(f"t={int(NOW)}", f"t={int(NOW) - 1}")
    with pytest.raises(InvalidSignature):
        verifier.verify("POST", PATH, {SIGNATURE_HEADER: other_time}, BODY)


def test_other_key_is_invalid(clock: Clock) -> None:
    verifier = Verifier(Ed25519PrivateKey.generate().public_key(), clock=clock)
    with pytest.raises(InvalidSignature):
        verifier.verify("POST", PATH, signed(), BODY)


def test_missing_header_is_unauthenticated(verifier: Verifier) -> None:
    with pytest.raises(MissingSignature) as caught:
        verifier.verify("POST", PATH, {"Content-Type": "application/msgpack"}, BODY)
    assert caught.value.http_status == 401
    assert isinstance(caught.value, SignatureError)


def malformed_headers() -> list[str]:
    good = signed()[SIGNATURE_HEADER]
    timestamp, nonce, signature = (part[2:] for part in good.split(","))
    return [
        "",
        "garbage",
        f"n={nonce},s={signature}",  # no timestamp
        f"t={timestamp},s={signature}",  # no nonce
        f"t={timestamp},n={nonce}",  # no signature
        f"t=-{timestamp},n={nonce},s={signature}",
        f"t=1.5,n={nonce},s={signature}",
        f"t=١٢٣,n={nonce},s={signature}",  # digits, but not ASCII ones
        f"t={'9' * 40},n={nonce},s={signature}",
        f"t={timestamp},n={nonce[:-1]},s={signature}",
        f"t={timestamp},n={nonce[:-1]}g,s={signature}",
        f"t={timestamp},n={nonce.upper()},s={signature}",
        f"t={timestamp},n={nonce},s={signature[:-4]}",
        f"t={timestamp},n={nonce},s=not base64!",
        f"t={timestamp},n={nonce},s={signature},t={timestamp}",  # a parameter twice
        f"t={timestamp};n={nonce};s={signature}",
    ]


@pytest.mark.parametrize("header", malformed_headers())
def test_malformed_header_is_unauthenticated(verifier: Verifier, header: str) -> None:
    with pytest.raises(MissingSignature):
        verifier.verify("POST", PATH, {SIGNATURE_HEADER: header}, BODY)


def test_two_headers_are_refused(verifier: Verifier) -> None:
    headers = {SIGNATURE_HEADER: signed()[SIGNATURE_HEADER], "dispatch-signature": "x"}
    with pytest.raises(MissingSignature, match="more than one"):
        verifier.verify("POST", PATH, headers, BODY)


def test_unknown_parameters_are_ignored(verifier: Verifier) -> None:
    header = signed()[SIGNATURE_HEADER]
    verifier.verify("POST", PATH, {SIGNATURE_HEADER: f"{header},k=later"}, BODY)


def test_stale_signature(verifier: Verifier, clock: Clock) -> None:
    headers = signed()
    clock.now = NOW + 301
    with pytest.raises(StaleSignature) as caught:
        verifier.verify("POST", PATH, headers, BODY)
    assert caught.value.http_status == 403
    clock.now = NOW + 300
    verifier.verify("POST", PATH, headers, BODY)


def test_signature_from_the_future(verifier: Verifier) -> None:
    with pytest.raises(StaleSignature, match="future"):
        verifier.verify("POST", PATH, signed(now=NOW + 61), BODY)
    verifier.verify("POST", PATH, signed(now=NOW + 59), BODY)  # tolerated clock skew


def test_replayed_signature(verifier: Verifier, clock: Clock) -> None:
    headers = signed()
    verifier.verify("POST", PATH, headers, BODY)
    with pytest.raises(ReplayedSignature) as caught:
        verifier.verify("POST", PATH, headers, BODY)
    assert caught.value.http_status == 403
    clock.now = NOW + 200
    with pytest.raises(ReplayedSignature):
        verifier.verify("POST", PATH, headers, BODY)


def test_failed_verification_does_not_burn_the_nonce(verifier: Verifier) -> None:
    headers = signed()
    with pytest.raises(InvalidSignature):
        verifier.verify("POST", PATH, headers, b"forged body")
    verifier.verify("POST", PATH, headers, BODY)


def test_expired_nonces_are_forgotten(verifier: Verifier, clock: Clock) -> None:
    for _ in range(10):
        verifier.verify("POST", PATH, signed(), BODY)
    assert len(verifier._nonces) == 10
    clock.now = NOW + 301
    verifier.verify("POST", PATH, signed(now=clock.now), BODY)
    assert len(verifier._nonces) == 1


def test_nonce_cap_never_lets_a_replay_through(clock: Clock) -> None:
    verifier = Verifier(PRIVATE_KEY.public_key(), clock=clock, max_nonces=3)
    first = signed(now=NOW - 10)
    verifier.verify("POST", PATH, first, BODY)
    for _ in range(3):
        verifier.verify("POST", PATH, signed(), BODY)
    assert len(verifier._nonces) == 3
    # `first` was forgotten to stay within the cap: refused, though not remembered.
    with pytest.raises(StaleSignature):
        verifier.verify("POST", PATH, first, BODY)
    verifier.verify("POST", PATH, signed(now=NOW + 1), BODY)


def test_clock_stepping_back_lets_no_replay_through(verifier: Verifier, clock: Clock) -> None:
    headers = signed()
    verifier.verify("POST", PATH, headers, BODY)
    clock.now = NOW + 301  # the nonce expires and is forgotten...
    verifier.verify("POST", PATH, signed(now=clock.now), BODY)
    clock.now = NOW + 250  # ...then the clock steps back into its window
    with pytest.raises(StaleSignature):
        verifier.verify("POST", PATH, headers, BODY)


def test_concurrent_replays_accept_exactly_one(verifier: Verifier) -> None:
    headers = signed()
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def attempt() -> None:
        barrier.wait()
        try:
            verifier.verify("POST", PATH, headers, BODY)
            outcomes.append("accepted")
        except ReplayedSignature:
            outcomes.append("replayed")

    threads = [threading.Thread(target=attempt) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] + ["replayed"] * 15


# --- keys -----------------------------------------------------------------------------------


def test_generated_keypair_loads_and_matches() -> None:
    private_text, public_text = generate_keypair()
    private_key, public_key = load_private_key(private_text), load_public_key(public_text)
    assert raw(private_key.public_key()) == raw(public_key)
    assert len(base64.b64decode(private_text)) == len(base64.b64decode(public_text)) == 32
    headers = sign_request(private_key, "POST", PATH, BODY)
    Verifier(public_key).verify("POST", PATH, headers, BODY)


def private_forms(key: Ed25519PrivateKey) -> list[str | bytes]:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw_bytes = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return [*encodings(raw_bytes), pem, pem.decode()]


def public_forms(key: Ed25519PublicKey) -> list[str | bytes]:
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [*encodings(raw(key)), pem, pem.decode()]


def encodings(raw_bytes: bytes) -> list[str | bytes]:
    standard = base64.b64encode(raw_bytes).decode()
    urlsafe = base64.urlsafe_b64encode(raw_bytes).decode()
    return [
        standard,
        standard.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
        f"  {standard}\n",
        standard.encode(),
    ]


def test_key_forms() -> None:
    # Find a key whose base64 uses the characters that differ between alphabets.
    key = Ed25519PrivateKey.generate()
    while not {"+", "/"} & set(base64.b64encode(raw(key.public_key())).decode()):
        key = Ed25519PrivateKey.generate()
    expected = raw(key.public_key())
    for form in private_forms(key):
        assert raw(load_private_key(form).public_key()) == expected, form
    for form in public_forms(key.public_key()):
        assert raw(load_public_key(form)) == expected, form


def bad_keys() -> list[tuple[Callable[[str | bytes], object], str | bytes, str]]:
    private_text, public_text = generate_keypair()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    ec_public = (
        ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    too_long = base64.b64encode(base64.b64decode(private_text) + b"\x00").decode()
    return [
        (load_private_key, private_text[:-8], "32 raw bytes"),
        (load_private_key, too_long, "32 raw bytes"),
        (load_private_key, private_text.replace("A", "!") + "!", "PEM or base64"),
        (
            load_private_key,
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----",
            "PEM",
        ),
        (load_private_key, ec_private, "another kind of key"),
        (load_private_key, b"\xff" + base64.b64decode(private_text), "binary"),
        (load_public_key, public_text[:-8], "32 raw bytes"),
        (load_public_key, ec_public, "another kind of key"),
        (load_public_key, ec_private, "PEM"),
        (load_public_key, "", "32 raw bytes"),
    ]


@pytest.mark.parametrize(("load", "text", "reason"), bad_keys())
def test_bad_key_error_never_quotes_the_key(
    load: Callable[[str | bytes], object], text: str | bytes, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        load(text)
    message = str(caught.value)
    assert message.startswith("Ed25519 ")
    key_text = text.decode("latin-1") if isinstance(text, bytes) else text
    for line in key_text.splitlines():
        for chunk in (line[i : i + 8] for i in range(0, len(line), 8)):
            if len(chunk) == 8 and "-----" not in chunk:
                assert chunk not in message
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
