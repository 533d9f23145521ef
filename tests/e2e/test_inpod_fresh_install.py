"""The CNI-time fast install: one restore on a fresh netns, and a safe fallback when it is not fresh."""
import subprocess
import uuid

import pytest

from node_agent.inpod import redirect_iptables

pytestmark = pytest.mark.root


@pytest.fixture
def netns():
    name = f"cnit-fresh-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _save(path: str) -> str:
    return subprocess.run(["nsenter", f"--net={path}", "iptables-save", "-t", "nat"], capture_output=True,
                          text=True, check=True).stdout


def test_fresh_install_equals_the_full_install_and_a_repeat_adds_no_second_hook(netns):
    redirect_iptables.install(netns, fresh=True)
    assert redirect_iptables.state(netns).status == "installed"
    rules = [line for line in _save(netns).splitlines() if line.startswith("-A")]
    redirect_iptables.install(netns, fresh=True)  # not fresh any more: falls back to read-repair
    assert redirect_iptables.state(netns).status == "installed"
    assert [line for line in _save(netns).splitlines() if line.startswith("-A")] == rules
    assert redirect_iptables.remove(netns)
    assert redirect_iptables.state(netns).status == "absent"
