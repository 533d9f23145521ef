"""Errors of the ``cni`` package, rooted at one base."""
from __future__ import annotations


class AmbitCniError(Exception):
    """Base of every error raised by the ``cni`` package."""


class CniError(AmbitCniError):
    """A CNI error result: printed as ``{"cniVersion", "code", "msg", "details"}`` with exit 1."""

    def __init__(self, code: int, msg: str, *, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __repr__(self) -> str:
        return f"CniError({self.code!r}, {self.msg!r}, details={self.details!r})"


class ProtocolError(AmbitCniError, ValueError):
    """Bytes on the plugin<->agent socket that are not a valid message."""


class UnsupportedProtocolVersion(ProtocolError):
    """A well-formed message of a protocol version this side does not speak."""

    def __init__(self, version: object, msg: str) -> None:
        super().__init__(msg)
        self.version = version


class AgentError(AmbitCniError):
    """The node agent could not be asked."""


class AgentAbsent(AgentError):
    """The agent's socket does not exist: the agent is not installed or has never started here."""


class AgentUnreachable(AgentError):
    """The socket exists but the agent refused, reset or closed the connection."""


class AgentTimeout(AgentError):
    """The agent did not answer within the plugin's ``agentTimeoutSeconds``."""


class InstallError(AmbitCniError):
    """The installer cannot patch the node's CNI configuration or write the plugin."""


class InvalidConfigFile(InstallError):
    """A CNI config file in the conf dir is not something the installer can patch."""


class NoPrimaryConfig(InstallError):
    """The conf dir holds no primary CNI config yet (the primary CNI has not started)."""
