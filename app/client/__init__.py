"""The finetune client: the Python SDK (`Client`) and the CLI commands built on it."""

from app.client.sdk import ApiError, Client

__all__ = ["ApiError", "Client"]
