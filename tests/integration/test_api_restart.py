"""Restarting the sandbox API process loses nothing and keeps resourceVersions increasing."""
from __future__ import annotations

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from sandbox.api.process import ApiProcess
from sandbox.config import SandboxConfig


@pytest.fixture
def cfg(tmp_path):
    return SandboxConfig(name="apit", index=7, base_dir=tmp_path)


def clients(api: ApiProcess) -> tuple[client.ApiClient, client.CoreV1Api]:
    c = config.new_client_from_config(config_file=str(api.kubeconfig))
    return c, client.CoreV1Api(c)


def test_restart_keeps_objects_and_versions_grow(cfg):
    with ApiProcess(cfg) as api:
        c, core = clients(api)
        try:
            core.create_namespace({"metadata": {"name": "kept"}})
            svc = core.create_namespaced_service("kept", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
            for i in range(3):
                core.create_namespaced_config_map("kept", {"metadata": {"name": f"c{i}", "labels": {"i": str(i)}}, "data": {"i": str(i)}})
            before = {cm.metadata.name: cm for cm in core.list_namespaced_config_map("kept").items}
            rv_before = int(core.list_namespaced_config_map("kept").metadata.resource_version)
        finally:
            c.close()
    with ApiProcess(cfg) as api:
        c, core = clients(api)
        try:
            after = {cm.metadata.name: cm for cm in core.list_namespaced_config_map("kept").items}
            assert after.keys() == before.keys()
            for name, cm in after.items():
                assert cm.metadata.uid == before[name].metadata.uid
                assert cm.metadata.resource_version == before[name].metadata.resource_version
                assert cm.data == before[name].data
            assert core.read_namespaced_service("s", "kept").spec.cluster_ip == svc.spec.cluster_ip
            assert [sa.metadata.name for sa in core.list_namespaced_service_account("kept").items] == ["default"]
            updated = core.patch_namespaced_config_map("c0", "kept", {"data": {"i": "changed"}})
            assert int(updated.metadata.resource_version) > rv_before
            fresh = core.create_namespaced_service("kept", {"metadata": {"name": "t"}, "spec": {"ports": [{"port": 80}]}})
            assert fresh.spec.cluster_ip != svc.spec.cluster_ip, "allocated IPs survive a restart"
        finally:
            c.close()


def test_watch_from_before_a_restart_gets_410_then_relist_works(cfg):
    with ApiProcess(cfg) as api:
        c, core = clients(api)
        try:
            core.create_namespaced_config_map("default", {"metadata": {"name": "old"}})
            old_rv = core.list_namespaced_config_map("default").metadata.resource_version
            core.create_namespaced_config_map("default", {"metadata": {"name": "newer"}})
        finally:
            c.close()
    with ApiProcess(cfg) as api:
        c, core = clients(api)
        try:
            with pytest.raises(ApiException) as err:
                list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=old_rv, timeout_seconds=1))
            assert err.value.status == 410
            listed = core.list_namespaced_config_map("default")
            assert {cm.metadata.name for cm in listed.items} == {"old", "newer"}
            core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
            events = [
                (e["type"], e["object"].metadata.name)
                for e in watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=listed.metadata.resource_version, timeout_seconds=1)
            ]
            assert events == [("ADDED", "after")]
        finally:
            c.close()


def test_sigterm_ends_open_watches_and_exits_cleanly(cfg):
    api = ApiProcess(cfg).start()
    c, core = clients(api)
    try:
        resp = core.list_namespace(watch=True, resource_version="0", _preload_content=False)
        assert api.stop(grace=5) == 0
        body = resp.data.decode()
        assert body.count("\n") >= 3, "the watch ended cleanly after delivering its events"
        resp.release_conn()
    finally:
        api.stop()
        c.close()


def test_crds_and_their_objects_survive_a_restart(cfg):
    from pathlib import Path

    import yaml

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy" / "charts" / "ambit" / "crds"
                          / "gateway.networking.k8s.io_referencegrants.yaml").read_text())
    grant = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant", "metadata": {"name": "g"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "other"}],
                      "to": [{"group": "", "kind": "Service"}]}}
    with ApiProcess(cfg) as api:
        c, _ = clients(api)
        try:
            client.ApiextensionsV1Api(c).create_custom_resource_definition(crd)
            made = client.CustomObjectsApi(c).create_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", "default", "referencegrants", grant)
        finally:
            c.close()
    with ApiProcess(cfg) as api:
        c, _ = clients(api)
        try:
            custom = client.CustomObjectsApi(c)
            got = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1beta1", "default", "referencegrants", "g")
            assert got["metadata"]["uid"] == made["metadata"]["uid"] and got["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
            client.ApiextensionsV1Api(c).delete_custom_resource_definition("referencegrants.gateway.networking.k8s.io")
            with pytest.raises(ApiException) as err:
                custom.list_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "referencegrants")
            assert err.value.status == 404
        finally:
            c.close()
    with ApiProcess(cfg) as api:
        c, _ = clients(api)
        try:
            client.ApiextensionsV1Api(c).create_custom_resource_definition(crd)
            listed = client.CustomObjectsApi(c).list_namespaced_custom_object("gateway.networking.k8s.io", "v1", "default", "referencegrants")
            assert listed["items"] == [], "the deleted CRD took its objects with it"
        finally:
            c.close()
