"""Sends pending deliveries from the outbox: claim, sign, POST, record, back off.

At least once, from any number of API processes. A sender claims a due row with a
guarded UPDATE that pushes its next_attempt_at past the send's timeout; only one sender's
UPDATE matches. A sender that dies mid-send leaves the row to come due again when the
claim runs out, so the receiver may see a message twice (same webhook-id), never zero.
"""

import json
import logging
import threading
import time
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from app.core.config import Settings
from app.core.db import begin_write, get_sessionmaker, utcnow
from app.webhooks import signing
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.service import AddressRefused, resolve

log = logging.getLogger("finetune.webhooks")

BATCH = 20
USER_AGENT = "finetune-webhooks/1"


def _claim(session, delivery_id: str, hold_s: float) -> bool:
    begin_write(session)
    now = utcnow()
    won = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=now + timedelta(seconds=hold_s))
    ).rowcount
    session.commit()
    return bool(won)


def _send(client: httpx.Client, endpoint: WebhookEndpoint, event: WebhookEvent, settings: Settings):
    """POST the signed body to the endpoint, connecting only to the addresses checked just
    now (no second lookup that could answer differently).

    Returns (status code or None, error or None, refused: the address is not allowed)."""
    try:
        host, _, addresses = resolve(endpoint.url, allow_private=settings.webhook_allow_private)
    except AddressRefused as exc:
        return None, str(exc), True
    body = json.dumps(event.payload, separators=(",", ":")).encode()
    url = httpx.URL(endpoint.url)
    headers = {
        **signing.headers(endpoint.secret, event.id, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": url.netloc.decode("ascii"),
    }
    error = None
    for address in addresses:
        try:
            # Streamed and closed unread: only the status counts, whatever the body's size.
            with client.stream(
                "POST",
                url.copy_with(host=address.split("%")[0]),
                content=body,
                headers=headers,
                extensions={"sni_hostname": host} if url.scheme == "https" else {},
            ) as r:
                return r.status_code, None, False
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
    return None, error, False


def _record(
    session,
    delivery_id: str,
    attempt: int,
    code: int | None,
    error: str | None,
    duration_ms: float,
    settings: Settings,
    permanent: bool,
) -> None:
    begin_write(session)
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None or row.status != "pending":  # deleted, or another sender finished it
        session.rollback()
        return
    now = utcnow()
    row.attempts = max(row.attempts, attempt)
    row.last_status_code = code
    row.log = [
        *row.log,
        {
            "attempt": attempt,
            "at": now.isoformat(),
            "status_code": code,
            "error": error,
            "duration_ms": round(duration_ms, 1),
        },
    ]
    if code is not None and 200 <= code < 300:
        row.status, row.finished_at = "succeeded", now
    elif permanent or row.attempts >= settings.webhook_max_attempts:
        row.status, row.finished_at = "failed", now
    else:
        delay = min(
            settings.webhook_backoff_seconds * 2 ** (row.attempts - 1),
            settings.webhook_backoff_max_seconds,
        )
        row.next_attempt_at = now + timedelta(seconds=delay)
    session.commit()


def deliver_due(settings: Settings, client: httpx.Client) -> int:
    """Claim and send every delivery that is due now; returns how many were attempted."""
    Session = get_sessionmaker()
    # Longer than one send can take (connect, write and read each have the timeout); a
    # sender that died holding the claim delays that delivery by this much at most.
    hold_s = settings.webhook_timeout_seconds * 3 + 5
    with Session() as session:
        due = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow()
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(BATCH)
            )
        )
    sent = 0
    for delivery_id in due:
        with Session() as session:
            if not _claim(session, delivery_id, hold_s):
                continue  # another sender has it
            row = session.get(WebhookDelivery, delivery_id)
            endpoint = row and session.get(WebhookEndpoint, row.endpoint_id)
            event = row and session.get(WebhookEvent, row.event_id)
            attempt = row.attempts + 1 if row else 0
            session.commit()
        if endpoint is None or event is None:
            continue  # the endpoint was deleted meanwhile
        start = time.monotonic()
        code, error, refused = _send(client, endpoint, event, settings)
        with Session() as session:
            _record(
                session,
                delivery_id,
                attempt,
                code,
                error,
                (time.monotonic() - start) * 1000,
                settings,
                permanent=refused,
            )
        if refused:
            log.warning("webhook %s: delivery %s refused: %s", endpoint.id, delivery_id, error)
        sent += 1
    return sent


class Deliverer:
    """The API process's sender thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.webhook_timeout_seconds + 5)

    def _run(self) -> None:
        # No redirects: a 3xx is an answer (not 2xx: retried), never a hop to another host.
        with httpx.Client(
            timeout=self.settings.webhook_timeout_seconds, follow_redirects=False
        ) as client:
            while not self._stop.wait(self.settings.webhook_poll_seconds):
                try:
                    while deliver_due(self.settings, client) and not self._stop.is_set():
                        pass
                except Exception:  # database away: try again next round
                    log.warning("webhook delivery round failed", exc_info=True)
