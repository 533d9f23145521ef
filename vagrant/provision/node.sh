#!/usr/bin/env bash
# Every node (cp, w1, w2): the host as kubeadm wants it. No swap, br_netfilter and forwarding;
# Debian's containerd with the systemd cgroup driver and CNI in /opt/cni/bin + /etc/cni/net.d (the
# chart's cni.binDir/confDir); the CNI reference plugins there; kubeadm, kubelet and kubectl as
# snaps; a kubelet.service the way kubeadm drives it; python3 (the CNI plugin's interpreter) and
# buildah (build-image.sh). Safe to run again.
# Env (from the Vagrantfile): NODE_IP, K8S_CHANNEL, CLUSTER_HOSTS ("ip name,ip name,...").
set -euo pipefail
: "${NODE_IP:?NODE_IP is not set; the Vagrantfile passes it}"
: "${K8S_CHANNEL:?K8S_CHANNEL is not set; the Vagrantfile passes it (e.g. 1.33/stable)}"
: "${CLUSTER_HOSTS:?CLUSTER_HOSTS is not set; the Vagrantfile passes it}"
export DEBIAN_FRONTEND=noninteractive
export PATH="/usr/local/sbin:/usr/local/bin:$PATH:/snap/bin"

log() { printf '==> %s: %s\n' "$(hostname)" "$*"; }

log "swap off (the kubelet does not start with swap on)"
swapoff -a
sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# \1  # off for the kubelet/' /etc/fstab

log "kernel: overlay, br_netfilter, bridged traffic through iptables, IPv4 forwarding"
printf 'overlay\nbr_netfilter\n' >/etc/modules-load.d/k8s.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/90-k8s.conf <<'EOF'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
EOF
sysctl --quiet --system

log "the nodes' names on the private network"
IFS=, read -r -a hosts <<<"$CLUSTER_HOSTS"
for entry in "${hosts[@]}"; do
  grep -qxF "$entry" /etc/hosts || printf '%s\n' "$entry" >>/etc/hosts
done

log "packages: containerd, CNI plugins, buildah, python3, snapd and kubeadm's helpers"
apt-get update -qq
apt-get install -y -qq containerd containernetworking-plugins buildah \
  iptables iproute2 conntrack socat ethtool curl ca-certificates \
  python3 python3-venv python3-pip snapd >/dev/null

log "CNI reference plugins (Debian puts them in /usr/lib/cni) linked into /opt/cni/bin"
install -d /opt/cni/bin /etc/cni/net.d
for plugin in /usr/lib/cni/*; do
  ln -sfn "$plugin" "/opt/cni/bin/${plugin##*/}"
done

log "kubeadm, kubelet, kubectl: snaps from channel $K8S_CHANNEL"
snap wait system seed.loaded
for tool in kubeadm kubelet kubectl; do
  snap install "$tool" --classic --channel="$K8S_CHANNEL"
  ln -sfn "/snap/bin/$tool" "/usr/local/bin/$tool" # in every PATH, sudo's secure_path included
done
# A cluster's tools change version when its admin says so, not when snapd refreshes them.
if ! snap refresh --hold kubeadm kubelet kubectl >/dev/null; then
  log "warning: this snapd cannot hold refreshes (needs 2.58+); snapd may update the Kubernetes tools"
fi
# kubeadm starts, stops and configures kubelet.service (below); the snap's own service would
# fight it for port 10250.
services=$(snap services kubelet 2>/dev/null || true)
if grep -q '^kubelet\.' <<<"$services"; then
  snap stop --disable kubelet
fi

log "containerd: its default config, systemd cgroups, this kubeadm's pause image"
config=$(mktemp)
containerd config default >"$config"
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' "$config"
grep -q 'SystemdCgroup = true' "$config" || { echo "error: containerd's default config has no SystemdCgroup switch" >&2; exit 1; }
grep -q 'bin_dir = "/opt/cni/bin"' "$config" || { echo "error: containerd's default CNI bin_dir is not /opt/cni/bin" >&2; exit 1; }
pause_image=$(kubeadm config images list --kubernetes-version "$(kubeadm version -o short)" 2>/dev/null | grep '/pause:' || true)
if [ -n "$pause_image" ]; then
  sed -i -E "s|^([[:space:]]*sandbox_image = ).*|\\1\"$pause_image\"|" "$config"
fi
if ! cmp -s "$config" /etc/containerd/config.toml; then
  install -m 0644 "$config" /etc/containerd/config.toml
  systemctl restart containerd
fi
rm -f "$config"
systemctl enable --now containerd >/dev/null

log "kubelet.service for kubeadm (node IP $NODE_IP)"
printf 'KUBELET_EXTRA_ARGS=--node-ip=%s\n' "$NODE_IP" >/etc/default/kubelet
cat >/etc/systemd/system/kubelet.service <<'EOF'
# Written by Ambit's vagrant/provision/node.sh: the kubelet snap's binary, started the way
# `kubeadm init`/`kubeadm join` expect of a unit named kubelet (the flags files they write).
[Unit]
Description=kubelet: the Kubernetes node agent
Wants=network-online.target
After=network-online.target containerd.service
StartLimitIntervalSec=0

[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=/snap/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable kubelet >/dev/null
log "ready for kubeadm: $(kubeadm version -o short), containerd $(containerd --version | awk '{print $3}')"
