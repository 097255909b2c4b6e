"""The service calls only public addresses unless FINETUNE_WEBHOOK_ALLOW_PRIVATE=true:
checked at registration, and again when it sends (the name is resolved then)."""

import pytest

from tests.conftest import TEST_KEY
from tests.webhooks.test_webhooks import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
    ],
)
def test_private_targets_are_refused_at_registration(api, url):
    r = api.post("/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (
        err["code"] == "webhook_url_not_allowed"
        and "FINETUNE_WEBHOOK_ALLOW_PRIVATE" in (err["message"])
    )


def test_not_http_is_refused(api):
    for url in ("ftp://example.com/x", "file:///etc/passwd", "http:///nohost"):
        r = api.post("/v1/webhooks", json={"url": url})
        assert r.status_code == 422 and r.json()["error"]["code"] == "webhook_url_not_allowed"


def _pending_delivery(url: str) -> str:
    """An endpoint (registered while private targets were allowed) with one due delivery."""
    from app.auth.models import Owner
    from app.auth.service import ensure_admin
    from app.core.db import get_sessionmaker, new_id
    from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
    from app.webhooks.signing import new_secret

    with get_sessionmaker()() as session:
        ensure_admin(session=session, configured_key=TEST_KEY)
        owner = session.query(Owner).filter(Owner.is_admin).one()
        endpoint = WebhookEndpoint(
            id=new_id("wh"), owner_id=owner.id, url=url, events=["job.failed"],
            secret=new_secret(),
        )  # fmt: skip
        event = WebhookEvent(
            id=new_id("evt"), owner_id=owner.id, type="job.failed",
            payload={"id": "evt_x", "type": "job.failed", "data": {}},
        )  # fmt: skip
        delivery = WebhookDelivery(
            id=new_id("dlv"), endpoint_id=endpoint.id, event_id=event.id, event_type="job.failed"
        )
        session.add_all([endpoint, event])
        session.flush()
        session.add(delivery)
        session.commit()
        return delivery.id


def test_send_time_check_refuses_a_name_that_resolves_to_loopback(data_dir, receiver):
    import httpx

    from app.core.config import Settings
    from app.core.db import get_sessionmaker
    from app.webhooks.delivery import deliver_due
    from app.webhooks.models import WebhookDelivery

    # "localhost" is only a name until it is resolved, at send time.
    url = receiver.url.replace("127.0.0.1", "localhost")
    refused = _pending_delivery(url)
    with httpx.Client() as client:
        assert deliver_due(Settings(webhook_allow_private=False), client) == 1
    with get_sessionmaker()() as session:
        row = session.get(WebhookDelivery, refused)
        assert row.status == "failed" and row.attempts == 1 and row.last_status_code is None
        assert "loopback" in row.log[0]["error"]
    assert receiver.requests == []  # never called

    allowed = _pending_delivery(url)
    with httpx.Client() as client:
        assert deliver_due(Settings(webhook_allow_private=True), client) == 1
    assert len(receiver.requests) == 1
    with get_sessionmaker()() as session:
        assert session.get(WebhookDelivery, allowed).status == "succeeded"
        assert session.get(WebhookDelivery, refused).status == "failed"  # not retried
