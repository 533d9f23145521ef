"""The sandbox node's error hierarchy: one base, one class per layer."""
from __future__ import annotations


class NodeError(Exception):
    """Something the sandbox node layer could not do; the message says what to try."""


class UnderlayError(NodeError):
    """Creating or removing the host bridge, node namespaces, links or routes failed."""


class NetnsError(NodeError):
    """A network namespace operation failed."""


class CniError(NodeError):
    """A CNI plugin failed, with the fields of the CNI error object (spec 1.0.0, "Error").

    ``code`` is the plugin's error code (1-99 are the spec's well-known codes, 100+ plugin
    specific) or ``None`` when the runtime itself failed (plugin not found, timeout, bad output).
    """

    def __init__(self, msg: str, *, code: int | None = None, details: str = "",
                 plugin: str = "", command: str = "") -> None:
        self.msg = msg
        self.code = code
        self.details = details
        self.plugin = plugin
        self.command = command
        where = f"plugin {plugin} {command}: " if plugin else (f"cni {command}: " if command else "")
        text = f"{where}{msg}"
        if code is not None:
            text += f" (code {code})"
        if details:
            text += f": {details}"
        super().__init__(text)


class KubeProxyError(NodeError):
    """Applying a node's service rules with iptables failed."""


class ApiError(NodeError):
    """The API server refused or failed a request the kubelet made (status and its message)."""

    def __init__(self, msg: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(msg)


class ContainerError(NodeError):
    """A container could not be configured or started (bad env reference, missing command)."""

    def __init__(self, msg: str, *, reason: str = "CreateContainerConfigError") -> None:
        self.reason = reason
        super().__init__(msg)


class NodeFsError(NodeError):
    """A node's filesystem (its own mount namespace, ``nodefs``) could not be made or found."""
