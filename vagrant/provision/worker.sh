#!/usr/bin/env bash
# Workers (w1, w2): join the cluster whenever the control plane is up. The join itself runs in
# ambit-join.service, which retries join.sh every 10 s until it succeeds, so this provisioner
# returns at once: cp, defined after the workers, may be created minutes later.
# Env (from the Vagrantfile): CP_IP, BOOTSTRAP_TOKEN.
set -euo pipefail
: "${CP_IP:?CP_IP is not set; the Vagrantfile passes it}"
: "${BOOTSTRAP_TOKEN:?BOOTSTRAP_TOKEN is not set; the Vagrantfile passes it}"
src=${AMBIT_SRC:-/vagrant}

install -d -m 0700 /etc/ambit
(umask 077 && printf 'CP_IP=%s\nBOOTSTRAP_TOKEN=%s\n' "$CP_IP" "$BOOTSTRAP_TOKEN" >/etc/ambit/join.env)
install -m 0755 "$src/vagrant/provision/join.sh" /usr/local/sbin/ambit-join

cat >/etc/systemd/system/ambit-join.service <<'EOF'
# Written by Ambit's vagrant/provision/worker.sh.
[Unit]
Description=Join this node to the Ambit VM cluster (retries until the control plane answers)
Wants=network-online.target
After=network-online.target containerd.service
ConditionPathExists=!/etc/kubernetes/kubelet.conf
StartLimitIntervalSec=0

[Service]
Type=oneshot
EnvironmentFile=/etc/ambit/join.env
ExecStart=/usr/local/sbin/ambit-join
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable ambit-join.service >/dev/null
systemctl start --no-block ambit-join.service
printf '==> %s: will join %s:6443 when it answers (journalctl -u ambit-join -f)\n' "$(hostname)" "$CP_IP"
