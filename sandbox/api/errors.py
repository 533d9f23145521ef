"""The API's one error hierarchy; every error renders as a Kubernetes ``Status`` object."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request failed; ``code`` and ``reason`` are what a Kubernetes client switches on."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Unauthorized(ApiError):
    code = 401
    reason = "Unauthorized"


class Forbidden(ApiError):
    code = 403
    reason = "Forbidden"


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class MethodNotAllowed(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class NotAcceptable(ApiError):
    code = 406
    reason = "NotAcceptable"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Conflict(ApiError):
    code = 409
    reason = "Conflict"


class Expired(ApiError):
    code = 410
    reason = "Expired"


class UnsupportedMediaType(ApiError):
    code = 415
    reason = "UnsupportedMediaType"


class Invalid(ApiError):
    """422: the object is well-formed JSON but breaks a validation rule (``details.causes``)."""

    code = 422
    reason = "Invalid"


class InternalError(ApiError):
    code = 500
    reason = "InternalError"


def not_found(resource: str, name: str, *, group: str = "") -> NotFound:
    qualified = f"{resource}.{group}" if group else resource
    return NotFound(
        f'{qualified} "{name}" not found',
        details={"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def already_exists(resource: str, name: str, *, group: str = "") -> AlreadyExists:
    qualified = f"{resource}.{group}" if group else resource
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return AlreadyExists(f'{qualified} "{name}" already exists', details=details)


def namespace_terminating(resource: str, name: str, namespace: str, *, group: str = "") -> Forbidden:
    """403 for new content in a Terminating namespace, worded as Kubernetes' NamespaceLifecycle does."""
    qualified = f"{resource}.{group}" if group else resource
    details: dict[str, Any] = {
        "name": name,
        "kind": resource,
        "causes": [{"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated", "field": "metadata.namespace"}],
    }
    if group:
        details["group"] = group
    return Forbidden(
        f'{qualified} "{name}" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
        details=details,
    )


def conflict(resource: str, name: str, *, group: str = "") -> Conflict:
    qualified = f"{resource}.{group}" if group else resource
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return Conflict(
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details=details,
    )


def invalid(kind: str, name: str, causes: list[dict[str, str]], *, group: str = "", qualified: bool = False) -> Invalid:
    """Build a 422 the way Kubernetes words it: `Kind "name" is invalid: field: msg, field: msg`
    (``qualified``: `Kind.group "name"`, as for custom resources)."""
    summary = ", ".join(f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes)
    if len(causes) > 1:
        summary = f"[{summary}]"
    details: dict[str, Any] = {"name": name, "kind": kind, "causes": causes}
    if group:
        details["group"] = group
    shown = f"{kind}.{group}" if qualified and group else kind
    return Invalid(f'{shown} "{name}" is invalid: {summary}', details=details)
