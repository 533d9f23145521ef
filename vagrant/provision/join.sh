#!/usr/bin/env bash
# ambit-join: one attempt to join this worker to the cluster; ambit-join.service (worker.sh) runs
# it again 10 s after every failure. A failed `kubeadm join` is undone with `kubeadm reset`, so
# the next attempt starts clean.
# Env (/etc/ambit/join.env): CP_IP, BOOTSTRAP_TOKEN.
set -euo pipefail
: "${CP_IP:?CP_IP is not set (/etc/ambit/join.env)}"
: "${BOOTSTRAP_TOKEN:?BOOTSTRAP_TOKEN is not set (/etc/ambit/join.env)}"
export PATH="/usr/local/sbin:/usr/local/bin:$PATH:/snap/bin"

if [ -e /etc/kubernetes/kubelet.conf ]; then
  echo "already a node of the cluster"
  exit 0
fi
# /readyz is open to anonymous requests on a kubeadm cluster.
if ! curl --insecure --silent --fail --max-time 5 "https://$CP_IP:6443/readyz" >/dev/null; then
  echo "the API server at $CP_IP:6443 is not ready yet; trying again soon"
  exit 1
fi
# The cluster CA is not pinned (--discovery-token-unsafe-skip-ca-verification): the token is made
# per cluster by the Vagrantfile and only travels on the VMs' private network. Not for production.
if ! kubeadm join "$CP_IP:6443" --token "$BOOTSTRAP_TOKEN" --discovery-token-unsafe-skip-ca-verification; then
  echo "kubeadm join failed; undoing it for the next attempt"
  kubeadm reset --force || echo "kubeadm reset failed too"
  exit 1
fi
echo "joined the cluster at $CP_IP:6443"
