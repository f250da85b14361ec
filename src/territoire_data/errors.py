"""One error hierarchy for the whole platform; each class knows its HTTP status (RFC 9457 problem type)."""

from __future__ import annotations

from typing import Any


class TerritoireError(Exception):
    """Base of every error the platform raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    type_slug: str = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ConfigurationError(TerritoireError):
    """A setting is missing or malformed."""

    title = "Configuration error"
    type_slug = "configuration"


class BadRequestError(TerritoireError):
    status = 400
    title = "Bad request"
    type_slug = "bad-request"


class UnauthorizedError(TerritoireError):
    status = 401
    title = "Unauthorized"
    type_slug = "unauthorized"


class InvalidTokenError(UnauthorizedError):
    """A bearer access token that is expired, malformed or not ours (RFC 6750 `invalid_token`): clients refresh it."""


class ForbiddenError(TerritoireError):
    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFoundError(TerritoireError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class ConflictError(TerritoireError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class PayloadTooLargeError(TerritoireError):
    status = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class ValidationFailedError(TerritoireError):
    status = 422
    title = "Validation failed"
    type_slug = "validation-failed"


class TooManyRequestsError(TerritoireError):
    status = 429
    title = "Too many requests"
    type_slug = "too-many-requests"


class ServiceUnavailableError(TerritoireError):
    status = 503
    title = "Service unavailable"
    type_slug = "service-unavailable"
