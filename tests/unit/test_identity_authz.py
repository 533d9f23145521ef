import asyncio

import pytest

from node_agent.identity.authz import NodeAuthorizer, PodInfo, TokenReviewResult
from node_agent.identity.errors import ClusterApiError, ForbiddenError, UnauthenticatedError
from node_agent.identity.spiffe import SpiffeId

AGENT = "system:serviceaccount:ambit-system:ambit-node-agent"
WEB = SpiffeId.for_workload("cluster.local", "shop", "web")
AGENT_POD = PodInfo(namespace="ambit-system", name="agent-1", uid="uid-agent-1", node_name="node-1",
                    service_account="ambit-node-agent", phase="Running")


def review(username=AGENT, *, pod="agent-1", uid="uid-agent-1", audiences=("ambit-identity",), ok=True, error=""):
    extra = {}
    if pod is not None:
        extra["authentication.kubernetes.io/pod-name"] = [pod]
    if uid is not None:
        extra["authentication.kubernetes.io/pod-uid"] = [uid]
    return TokenReviewResult(authenticated=ok, username=username, extra=extra, audiences=audiences, error=error)


def web_pod(node="node-1", phase="Running", sa="web", ns="shop", name="web-1"):
    return PodInfo(namespace=ns, name=name, uid=f"uid-{name}", node_name=node, service_account=sa, phase=phase)


class FakeCluster:
    def __init__(self, *, reviews=None, pods=(), fail=None):
        self.reviews = reviews or {}
        self.pods = list(pods)
        self.fail = fail
        self.calls = []

    async def review_token(self, token, *, audience):
        self.calls.append(("review", audience))
        if self.fail:
            raise self.fail
        return self.reviews.get(token, TokenReviewResult(authenticated=False, error="token not found"))

    async def get_pod(self, *, namespace, name):
        self.calls.append(("get", namespace, name))
        return next((p for p in self.pods if (p.namespace, p.name) == (namespace, name)), None)

    async def list_pods_on_node(self, *, namespace, node_name):
        self.calls.append(("list", namespace, node_name))
        return [p for p in self.pods if p.namespace == namespace and p.node_name == node_name]


def decide(cluster, token="t", identity=WEB):
    authorizer = NodeAuthorizer(cluster=cluster, audience="ambit-identity", node_agent_username=AGENT)

    async def go():
        caller = await authorizer.authenticate(token)
        return await authorizer.authorize(caller, identity)

    return asyncio.run(go())


def test_node_agent_gets_identity_of_a_pod_on_its_node():
    cluster = FakeCluster(reviews={"t": review()}, pods=[AGENT_POD, web_pod()])
    assert decide(cluster) == "node-1"
    assert ("review", "ambit-identity") in cluster.calls


def test_a_waypoint_gets_its_own_identity():
    caller = review("system:serviceaccount:shop:web", pod="web-1", uid="uid-web-1")
    assert decide(FakeCluster(reviews={"t": caller}, pods=[web_pod(node="node-3")])) == "node-3"


@pytest.mark.parametrize("phase", ["Running", "Pending"])
def test_running_or_pending_pods_count(phase):
    assert decide(FakeCluster(reviews={"t": review()}, pods=[AGENT_POD, web_pod(phase=phase)])) == "node-1"


@pytest.mark.parametrize(
    "token, reviews, pods, error, message",
    [
        ("", {}, [], UnauthenticatedError, "missing bearer token"),
        ("bogus", {}, [], UnauthenticatedError, "rejected by TokenReview: token not found"),
        ("t", {"t": review(audiences=("https://kubernetes.default.svc",))}, [], UnauthenticatedError,
         "not for audience 'ambit-identity'"),
        ("t", {"t": review(audiences=())}, [], UnauthenticatedError, "not for audience"),
        ("t", {"t": review("alice")}, [], ForbiddenError, "'alice' is not a service account"),
        ("t", {"t": review("system:serviceaccount:shop:db", pod="db-1", uid="uid-db-1")},
         [web_pod(name="db-1", sa="db")], ForbiddenError, "may obtain only its own identity (ns/shop/sa/db)"),
        ("t", {"t": review("system:serviceaccount:shop:web", pod="web-1", uid="uid-web-1")},
         [web_pod(phase="Succeeded")], ForbiddenError, "pod shop/web-1 is not Running or Pending"),
        ("t", {"t": review(pod=None)}, [AGENT_POD, web_pod()], ForbiddenError, "not bound to a pod"),
        ("t", {"t": review()}, [web_pod()], ForbiddenError, "pod ambit-system/agent-1 no longer exists"),
        ("t", {"t": review(uid="uid-old")}, [AGENT_POD, web_pod()], ForbiddenError, "has been replaced"),
        ("t", {"t": review()}, [PodInfo("ambit-system", "agent-1", "uid-agent-1", "", "ambit-node-agent", "Pending"),
                                web_pod()], ForbiddenError, "not scheduled"),
        ("t", {"t": review()}, [AGENT_POD, web_pod(node="node-2")], ForbiddenError,
         "no Running or Pending pod with service account 'web' in namespace 'shop' is on node 'node-1'"),
        ("t", {"t": review()}, [AGENT_POD, web_pod(sa="db")], ForbiddenError, "service account 'web'"),
        ("t", {"t": review()}, [AGENT_POD, web_pod(ns="other")], ForbiddenError, "namespace 'shop'"),
        ("t", {"t": review()}, [AGENT_POD, web_pod(phase="Succeeded"), web_pod(phase="Failed", name="web-2")],
         ForbiddenError, "no Running or Pending pod"),
    ],
    ids=["no-token", "bad-token", "wrong-audience", "audience-unaware", "not-a-service-account", "other-workloads-identity",
         "finished-workload-pod",
         "unbound-token", "caller-pod-gone", "caller-pod-replaced", "caller-unscheduled", "pod-on-other-node",
         "other-service-account", "other-namespace", "only-finished-pods"],
)
def test_refusals(token, reviews, pods, error, message):
    with pytest.raises(error) as info:
        decide(FakeCluster(reviews=reviews, pods=pods), token=token)
    assert message in info.value.reason
    assert info.value.status == (401 if error is UnauthenticatedError else 403)


def test_api_failure_is_not_a_refusal():
    with pytest.raises(ClusterApiError):
        decide(FakeCluster(fail=ClusterApiError("TokenReview failed: HTTP 500")))
