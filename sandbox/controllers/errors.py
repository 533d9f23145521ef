"""The controllers' errors, rooted at one base; client exceptions are converted at the applier."""
from __future__ import annotations


class ControllerError(Exception):
    """Base of everything the controllers raise on purpose."""


class ApplyError(ControllerError):
    """The API refused or failed an action; the key is retried with backoff."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ConflictError(ApplyError):
    """409 Conflict: the object changed under us; retry from the fresh cache."""


class StartupError(ControllerError):
    """The controller manager cannot start (no kubeconfig, bad settings)."""
