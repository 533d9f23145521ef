#!/usr/bin/env bash
# cp: `kubeadm init` (once), kubeconfigs for root and vagrant, flannel as the primary CNI, then
# wait until every node has joined and is Ready. Safe to run again.
# Env (from the Vagrantfile): CP_IP, POD_CIDR, BOOTSTRAP_TOKEN, FLANNEL_VERSION, NODE_COUNT.
set -euo pipefail
: "${CP_IP:?CP_IP is not set; the Vagrantfile passes it}"
: "${POD_CIDR:?POD_CIDR is not set; the Vagrantfile passes it}"
: "${BOOTSTRAP_TOKEN:?BOOTSTRAP_TOKEN is not set; the Vagrantfile passes it}"
: "${FLANNEL_VERSION:?FLANNEL_VERSION is not set; the Vagrantfile passes it}"
: "${NODE_COUNT:?NODE_COUNT is not set; the Vagrantfile passes it}"
export PATH="/usr/local/sbin:/usr/local/bin:$PATH:/snap/bin"
export KUBECONFIG=/etc/kubernetes/admin.conf

log() { printf '==> %s: %s\n' "$(hostname)" "$*"; }

if [ ! -e /etc/kubernetes/admin.conf ]; then
  log "kubeadm init (API server on $CP_IP:6443, pods in $POD_CIDR)"
  # The workers already hold this token (worker.sh) and keep trying to join with it; it does not
  # expire, so a worker re-created later joins the same way.
  kubeadm init --apiserver-advertise-address="$CP_IP" --pod-network-cidr="$POD_CIDR" \
    --token="$BOOTSTRAP_TOKEN" --token-ttl=0 --skip-token-print
fi
install -d -m 0700 ~root/.kube
install -m 0600 /etc/kubernetes/admin.conf ~root/.kube/config
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.kube
install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config

log "flannel $FLANNEL_VERSION (its release's kube-flannel.yml), on the private network's interface"
manifest="/var/lib/ambit/kube-flannel-$FLANNEL_VERSION.yml"
if [ ! -s "$manifest" ]; then
  install -d /var/lib/ambit
  curl --fail --silent --show-error --location --retry 3 -o "$manifest.part" \
    "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml"
  mv "$manifest.part" "$manifest"
fi
if ! grep -q '^ *- --kube-subnet-mgr$' "$manifest"; then
  echo "error: $manifest has no '- --kube-subnet-mgr' argument to add --iface-regex after; set AMBIT_FLANNEL_VERSION to a release that does" >&2
  exit 1
fi
# Every VM's first interface is the provider's NAT (the same 10.0.2.15 on all of them under
# VirtualBox), so flannel must use the interface holding the 192.168.56.x address.
net=${CP_IP%.*}
IFACE_ARG="--iface-regex=^${net//./\\.}\\." awk '
  { print }
  /^ *- --kube-subnet-mgr$/ { match($0, /^ */); printf "%s- %s\n", substr($0, 1, RLENGTH), ENVIRON["IFACE_ARG"] }
' "$manifest" | kubectl apply -f -

log "waiting for $NODE_COUNT nodes (the workers join by themselves: journalctl -u ambit-join on them)"
deadline=$((SECONDS + 1800))
while [ "$(kubectl get nodes --no-headers 2>/dev/null | wc -l)" -lt "$NODE_COUNT" ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    kubectl get nodes -o wide >&2 || true
    echo "error: fewer than $NODE_COUNT nodes after 30 minutes; are w1 and w2 up (vagrant status)? see journalctl -u ambit-join there" >&2
    exit 1
  fi
  sleep 10
done
kubectl wait --for=condition=Ready node --all --timeout=10m
kubectl rollout status daemonset/kube-flannel-ds -n kube-flannel --timeout=5m
kubectl get nodes -o wide
