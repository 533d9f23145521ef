"""``ambit-cni``: the chained CNI plugin that hands enrolled pods to the node agent.

ADD   pass ``prevResult`` through; in between, unless the pod's namespace is excluded or the
      sandbox is not a Kubernetes pod, ask the agent and wait: the agent answers ``enrolled``
      only once redirection and listeners are in place in the pod's netns, ``not_enrolled`` at
      once for other pods. Fail closed: no answer in time, or an ``error`` answer, is a CNI
      error, so the runtime retries and an enrolled pod never starts unprotected.
DEL   tell the agent, but never fail: the agent also sees the pod go through its API watch.
CHECK ask the agent to verify the pod's redirection.
VERSION print the supported versions.

Decisions and the error codes are described in docs/cni.md. Logs go to stderr; stdout carries
only the result.
"""
from __future__ import annotations

import os
import sys
import time

from cni import spec
from cni.agent_client import ask_agent
from cni.errors import AgentAbsent, AgentError, AgentTimeout, CniError, ProtocolError
from cni.protocol import ENROLLED, ERROR, CniRequest

DEL_TIMEOUT_CAP = 2.0
"""DEL waits at most this long for the agent: it is advisory, and a hung agent must not slow
pod deletion by ``agentTimeoutSeconds`` per pod."""


def main() -> int:
    """Console entry point: CNI_* env and stdin in, result on stdout, exit status out."""
    code, out = run(env=os.environ, stdin=_read_stdin())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return code


def run(*, env, stdin: bytes, ask=ask_agent) -> tuple[int, bytes]:
    """One plugin invocation: returns (exit status, stdout bytes).

    ``ask(path, request, *, timeout) -> CniResponse`` is the agent client (``ask_agent``).
    """
    try:
        invocation = spec.parse_env(env)
        if invocation.command == "VERSION":
            return 0, spec.render_version()
        config = spec.parse_config(stdin, command=invocation.command)
        if invocation.command == "ADD":
            return 0, _add(invocation, config, ask)
        if invocation.command == "DEL":
            _delete(invocation, config, ask)
        else:
            _check(invocation, config, ask)
        return 0, b""
    except CniError as err:
        _log(f"error {err.code}: {err.msg}" + (f" ({err.details})" if err.details else ""))
        return 1, spec.render_error(err, cni_version=spec.peek_version(stdin))


def _add(invocation: spec.Invocation, config: spec.PluginConfig, ask) -> bytes:
    result = spec.render_result(config.prev_result, cni_version=config.cni_version)
    request = _request(invocation, config)
    if request is None:
        return result
    pod = f"{request.pod_namespace}/{request.pod_name}"
    started = time.monotonic()
    try:
        response = ask(config.agent_socket, request, timeout=config.agent_timeout)
    except AgentAbsent as exc:
        if not config.fail_closed:
            _log(f"ADD {pod}: {exc}; failClosed is false, so the pod starts without Ambit")
            return result
        raise CniError(
            spec.TRY_AGAIN_LATER,
            f"the ambit node agent is not running on this node; pod {pod} waits until it is",
            details=f"{exc}; start the agent, or set failClosed to false in the ambit-cni config to let pods start without it",
        ) from None
    except AgentTimeout as exc:
        raise CniError(
            spec.TRY_AGAIN_LATER,
            f"the ambit node agent did not set up pod {pod} within {config.agent_timeout:g}s",
            details=f"{exc}; check the agent's log on this node",
        ) from None
    except AgentError as exc:
        raise CniError(
            spec.TRY_AGAIN_LATER,
            f"the ambit node agent is unreachable; pod {pod} waits until it is back",
            details=f"{exc}; check the agent on this node",
        ) from None
    except ProtocolError as exc:
        raise CniError(
            spec.AGENT_PROTOCOL,
            f"the ambit node agent's answer for pod {pod} was not understood",
            details=f"{exc}; are the agent and the installed ambit-cni from the same release?",
        ) from None
    if response.status == ERROR:
        raise CniError(spec.AGENT_FAILED, f"the ambit node agent could not set up pod {pod}", details=response.message)
    if response.status == ENROLLED:
        _log(f"ADD {pod}: enrolled in {(time.monotonic() - started) * 1000:.0f} ms")
    return result


def _delete(invocation: spec.Invocation, config: spec.PluginConfig, ask) -> None:
    request = _request(invocation, config)
    if request is None:
        return
    pod = f"{request.pod_namespace}/{request.pod_name}"
    try:
        response = ask(config.agent_socket, request, timeout=min(config.agent_timeout, DEL_TIMEOUT_CAP))
    except (AgentError, ProtocolError) as exc:
        _log(f"DEL {pod}: {exc}; deleting anyway (the agent cleans up from its API watch)")
        return
    if response.status == ERROR:
        _log(f"DEL {pod}: the agent reported: {response.message}; deleting anyway")


def _check(invocation: spec.Invocation, config: spec.PluginConfig, ask) -> None:
    request = _request(invocation, config)
    if request is None:
        return
    pod = f"{request.pod_namespace}/{request.pod_name}"
    try:
        response = ask(config.agent_socket, request, timeout=config.agent_timeout)
    except AgentAbsent as exc:
        if config.fail_closed:
            raise CniError(spec.TRY_AGAIN_LATER, f"cannot check pod {pod}: the ambit node agent is not running", details=str(exc)) from None
        return
    except AgentError as exc:
        raise CniError(spec.TRY_AGAIN_LATER, f"cannot check pod {pod}: the ambit node agent did not answer", details=str(exc)) from None
    except ProtocolError as exc:
        raise CniError(spec.AGENT_PROTOCOL, f"the ambit node agent's answer for pod {pod} was not understood", details=str(exc)) from None
    if response.status == ERROR:
        raise CniError(spec.AGENT_FAILED, f"pod {pod} is not set up as the ambit node agent expects", details=response.message)


def _request(invocation: spec.Invocation, config: spec.PluginConfig) -> CniRequest | None:
    """The question for the agent, or None when there is nothing to ask (fast paths)."""
    pod = spec.pod_ref(invocation.args)
    if pod is None:  # not a Kubernetes pod: Ambit enrols pods only
        return None
    if pod.namespace in config.exclude_namespaces:
        return None
    try:
        ips = tuple(spec.sandbox_ips(config.prev_result))
    except CniError:
        if invocation.command != "DEL":
            raise
        ips = ()  # DEL never fails over the shape of a result it does not need
    return CniRequest(
        command=invocation.command,
        pod_namespace=pod.namespace,
        pod_name=pod.name,
        pod_uid=pod.uid,
        container_id=invocation.container_id,
        netns=invocation.netns,
        interface=invocation.ifname,
        ips=ips,
    )


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except (OSError, AttributeError, ValueError):  # closed or missing stdin
        return b""


def _log(message: str) -> None:
    print(f"ambit-cni: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
