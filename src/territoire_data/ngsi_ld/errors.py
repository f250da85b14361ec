"""NGSI-LD problem details: the ETSI error types (clause 5.5.2 of GS CIM 009), each with its HTTP status."""

from __future__ import annotations

from territoire_data.errors import TerritoireError

ETSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiLdError(TerritoireError):
    status = 400
    title = "Bad request data"
    type_slug = ETSI_ERRORS + "BadRequestData"


class BadRequestData(NgsiLdError):
    pass


class InvalidRequest(NgsiLdError):
    title = "Invalid request"
    type_slug = ETSI_ERRORS + "InvalidRequest"


class ResourceNotFound(NgsiLdError):
    status = 404
    title = "Resource not found"
    type_slug = ETSI_ERRORS + "ResourceNotFound"


class AlreadyExists(NgsiLdError):
    status = 409
    title = "Already exists"
    type_slug = ETSI_ERRORS + "AlreadyExists"


class OperationNotSupported(NgsiLdError):
    status = 422
    title = "Operation not supported"
    type_slug = ETSI_ERRORS + "OperationNotSupported"


class NotAcceptable(NgsiLdError):
    status = 406
    title = "Not acceptable"
    type_slug = ETSI_ERRORS + "NotAcceptable"


class UnsupportedMediaType(NgsiLdError):
    status = 415
    title = "Unsupported media type"
    type_slug = ETSI_ERRORS + "UnsupportedMediaType"


class LdContextNotAvailable(NgsiLdError):
    status = 503
    title = "@context not available"
    type_slug = ETSI_ERRORS + "LdContextNotAvailable"


class TooManyResults(NgsiLdError):
    status = 403
    title = "Too many results"
    type_slug = ETSI_ERRORS + "TooManyResults"


class NonexistentTenant(NgsiLdError):
    status = 404
    title = "Nonexistent tenant"
    type_slug = ETSI_ERRORS + "NonexistentTenant"
