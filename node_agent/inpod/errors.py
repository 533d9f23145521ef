"""Errors of ``node_agent.inpod``, rooted at one base."""
from __future__ import annotations


class InpodError(Exception):
    """Base of every error raised by ``node_agent.inpod``."""


class NetnsError(InpodError):
    """A network namespace cannot be opened or entered, or a socket cannot be made in it."""


class RedirectError(InpodError):
    """Redirection rules could not be read, installed or removed."""


class CniServerError(InpodError):
    """The agent's CNI socket cannot be served."""
