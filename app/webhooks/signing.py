"""Standard Webhooks signatures (https://www.standardwebhooks.com): the sender's and the
receiver's side, standard library only.

    webhook-signature: v1,<base64 HMAC-SHA256(secret bytes, f"{id}.{timestamp}.{body}")>

where the secret bytes are the base64 after "whsec_".
"""

import base64
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


class InvalidSignature(Exception):
    pass


def verify(secret: str, headers: dict, body: bytes, tolerance_s: int = 300) -> None:
    """Raise InvalidSignature unless one of the header's v1 signatures matches and the
    timestamp is within tolerance_s of now (replays of old messages are refused)."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
        given = h["webhook-signature"].split()
    except (KeyError, ValueError):
        raise InvalidSignature("missing or malformed webhook-* headers") from None
    if abs(time.time() - ts) > tolerance_s:
        raise InvalidSignature("timestamp outside the tolerance")
    expected = sign(secret, msg_id, ts, body)
    if not any(hmac.compare_digest(expected, g) for g in given):
        raise InvalidSignature("no matching signature")
