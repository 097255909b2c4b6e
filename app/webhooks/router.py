from fastapi import APIRouter, status

from app.auth.deps import CurrentOwner
from app.core.deps import PageParams, SessionDep, SettingsDep
from app.core.routing import Route
from app.core.schemas import Page
from app.webhooks import service
from app.webhooks.schemas import DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], route_class=Route)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookCreated)
def create_webhook(
    body: WebhookCreate, owner: CurrentOwner, session: SessionDep, settings: SettingsDep
):
    """An endpoint that receives signed job events; its secret is in this answer only."""
    return service.create(
        session=session,
        owner=owner,
        url=body.url,
        events=list(body.events),
        allow_private=settings.webhook_allow_private,
    )


@router.get("", response_model=Page[WebhookOut])
def list_webhooks(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageParams,
):
    rows, total = service.list_(session=session, owner=owner, limit=page.limit, offset=page.offset)
    return page.body(rows, total)


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, owner: CurrentOwner, session: SessionDep):
    return service.get(session=session, owner=owner, webhook_id=webhook_id)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(webhook_id: str, owner: CurrentOwner, session: SessionDep) -> None:
    service.delete_(session=session, owner=owner, webhook_id=webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    webhook_id: str,
    owner: CurrentOwner,
    session: SessionDep,
    page: PageParams,
):
    """Each event sent to the endpoint, with every attempt's response code or error."""
    rows, total = service.deliveries(
        session=session, owner=owner, webhook_id=webhook_id, limit=page.limit, offset=page.offset
    )
    return page.body(rows, total)
