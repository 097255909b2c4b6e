"""Predict's own errors. Everything else a predict request can get wrong is an `Invalid`
(422) naming the field, or the engine's `InvalidInput` (422, mapped in app.main)."""

from app.core.errors import ApiError


class UnsupportedMediaType(ApiError):
    """The body's content type is not the one the model's modality takes."""

    status = 415
    code = "unsupported_media_type"


class TooManyPixels(ApiError):
    """The images' headers declare more pixels than one request may decode."""

    status = 413
    code = "too_many_pixels"


class BodyTooLarge(ApiError):
    """A JSON predict body over its limit."""

    status = 413
    code = "payload_too_large"
