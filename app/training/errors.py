"""Errors the engine raises on purpose.

Every one carries a stable `code` and a human `message`, so the API can turn it into
`{"error": {"code", "message"}}` with a 4xx without knowing the engine's internals.
"""

from __future__ import annotations


class EngineError(Exception):
    """A problem with the request or its inputs, not a bug in the engine."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field  # the config field at fault, when there is one
        if code is not None:
            self.code = code


class UnknownBaseModel(EngineError):
    code = "unknown_base_model"


class WeightsUnavailable(EngineError):
    code = "weights_unavailable"


class InvalidConfig(EngineError):
    code = "invalid_config"


class DatasetError(EngineError):
    code = "dataset_invalid"


class InvalidInput(EngineError):
    code = "invalid_input"


class CheckpointMismatch(EngineError):
    code = "checkpoint_mismatch"


class Cancelled(Exception):
    """should_stop() turned true; the last epoch checkpoint is still on disk.

    Not an EngineError: a cancel is what the user asked for, not a bad request.
    """
