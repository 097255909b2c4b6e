"""Webhooks: endpoints per owner, and the outbox rows a job transition writes."""

import ipaddress
import socket
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.core.db import begin_write, new_id, utcnow
from app.core.errors import Invalid, NotFound
from app.core.pagination import fetch_page
from app.jobs.models import Job
from app.jobs.schemas import JobOut
from app.webhooks import signing
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

TERMINAL_EVENTS = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}


class AddressRefused(Exception):
    """The URL's host is, or resolves to, an address the service must not call."""


def _why_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for attr in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{attr}"):
            return attr.replace("_", "-")
    # The rest of what is not globally routable: shared (CGNAT), documentation, ...
    return None if ip.is_global else "non-global"


def resolve(url: str, *, allow_private: bool) -> tuple[str, int, list[str]]:
    """(host, port, the addresses to connect to); AddressRefused if any is not public
    (unless allow_private). A name resolving to one private address among public ones is
    refused too: the connection could go to any of them."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a bad port, an unclosed [IPv6 bracket
        raise AddressRefused(f"url: {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise AddressRefused(f"url: {url!r} is not an http(s) URL with a host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise AddressRefused(f"url: cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        for address in addresses:
            why = _why_refused(ipaddress.ip_address(address.split("%")[0]))
            if why:
                raise AddressRefused(
                    f"url: {host!r} is {address}, a {why} address; the service calls only "
                    "public addresses (FINETUNE_WEBHOOK_ALLOW_PRIVATE=true allows others)"
                )
    return host, port, addresses


def create(
    *, session: Session, owner: Owner, url: str, events: list[str], allow_private: bool
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once)."""
    try:
        resolve(url, allow_private=allow_private)
    except AddressRefused as exc:
        raise Invalid(str(exc), code="webhook_url_not_allowed") from None
    begin_write(session)
    endpoint = WebhookEndpoint(
        id=new_id("wh"),
        owner_id=owner.id,
        url=url,
        events=sorted(set(events)),
        secret=signing.new_secret(),
    )
    session.add(endpoint)
    session.commit()
    return endpoint


def get(*, session: Session, owner: Owner, webhook_id: str) -> WebhookEndpoint:
    endpoint = session.get(WebhookEndpoint, webhook_id)
    if endpoint is None or endpoint.owner_id != owner.id:
        raise NotFound(f"webhook {webhook_id!r} not found")
    return endpoint


def list_(
    *, session: Session, owner: Owner, limit: int, offset: int
) -> tuple[list[WebhookEndpoint], int]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.owner_id == owner.id)
    return fetch_page(
        session=session, query=query, entity=WebhookEndpoint, limit=limit, offset=offset
    )


def delete_(*, session: Session, owner: Owner, webhook_id: str) -> None:
    """Remove the endpoint and its deliveries (pending ones are not sent)."""
    begin_write(session)
    endpoint = get(session=session, owner=owner, webhook_id=webhook_id)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)
    session.commit()


def deliveries(
    *, session: Session, owner: Owner, webhook_id: str, limit: int, offset: int
) -> tuple[list[WebhookDelivery], int]:
    endpoint = get(session=session, owner=owner, webhook_id=webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    return fetch_page(
        session=session, query=query, entity=WebhookDelivery, limit=limit, offset=offset
    )


def record_job_event(session: Session, job_id: str, type_: str) -> None:
    """Write the event and one pending delivery per subscribed endpoint, in the caller's
    transaction (the one that moves the job): the event exists if and only if the
    transition does. Nothing is written when no endpoint wants it."""
    session.flush()
    job = session.get(Job, job_id)
    if job is None:
        return
    endpoints = [
        e
        for e in session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.owner_id == job.owner_id)
        )
        if type_ in e.events
    ]
    if not endpoints:
        return
    session.refresh(job)  # a guarded UPDATE may have moved the row under the loaded object
    now = utcnow()
    event = WebhookEvent(id=new_id("evt"), owner_id=job.owner_id, type=type_, created_at=now)
    event.payload = {
        "id": event.id,
        "type": type_,
        "created_at": now.isoformat(),
        "data": JobOut.model_validate(job).model_dump(mode="json"),
    }
    session.add(event)
    session.flush()  # the event row before the deliveries that refer to it
    for endpoint in endpoints:
        session.add(
            WebhookDelivery(
                id=new_id("dlv"),
                endpoint_id=endpoint.id,
                event_id=event.id,
                event_type=type_,
                next_attempt_at=now,
            )
        )


def record_job_transition(session: Session, job_id: str, status: str) -> None:
    """record_job_event for a job that has just reached `status` (if it is an end state)."""
    if status in TERMINAL_EVENTS:
        record_job_event(session, job_id, TERMINAL_EVENTS[status])
