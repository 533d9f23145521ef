#!/usr/bin/env bash
# cp, last: install Ambit as a user would and check it. The ambit CLI (this checkout) and helm into
# /opt/ambit-cli; `helm upgrade --install` of deploy/charts/ambit with the image every node built;
# the demo (sandbox/demo) in namespace demo, enrolled with ambit.dev/dataplane-mode=ambient;
# `ambit check` when this checkout has it; then a request through the mesh and the agents'
# metrics showing demo traffic over mutual TLS. Safe to run again (`vagrant provision cp
# --provision-with ambit`). Env: AMBIT_SRC, the repository on the VM (default /vagrant).
set -euo pipefail
src=${AMBIT_SRC:-/vagrant}
export PATH="/opt/ambit-cli/bin:/usr/local/sbin:/usr/local/bin:$PATH:/snap/bin"
export KUBECONFIG=/etc/kubernetes/admin.conf

log() { printf '==> %s: %s\n' "$(hostname)" "$*"; }

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$src/pyproject.toml")
image="ambit.dev/ambit:$version"

log "the ambit CLI from $src into /opt/ambit-cli"
[ -x /opt/ambit-cli/bin/pip ] || python3 -m venv /opt/ambit-cli
/opt/ambit-cli/bin/pip install --quiet --disable-pip-version-check "${src}[cli]"
# the same version number as last time: reinstall so this checkout's code is the one installed
/opt/ambit-cli/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$src"

log "helm (and kubectl if the snap's is too old), the way make deps gets them"
if [ ! -f "$src/.ci/install-kube-tools" ]; then
  echo "error: $src/.ci/install-kube-tools is missing; this checkout cannot install helm the project's way" >&2
  exit 1
fi
/opt/ambit-cli/bin/python "$src/.ci/install-kube-tools" /opt/ambit-cli/bin
helm version

log "helm upgrade --install ambit (image $image, present on every node: pullPolicy Never)"
helm upgrade --install ambit "$src/deploy/charts/ambit" \
  --namespace ambit-system --create-namespace \
  --set image.repository=ambit.dev/ambit --set image.tag="$version" --set image.pullPolicy=Never \
  --wait --timeout 10m
kubectl get pods -n ambit-system -o wide

log "the demo in namespace demo, enrolled before its pods start"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace demo ambit.dev/dataplane-mode=ambient --overwrite
kubectl apply -f "$src/vagrant/demo-rbac.yaml"
# The demo's containers run `python3 -m sandbox.demo.<service>`: the Ambit image holds those
# modules (the wheel carries the sandbox package), so it stands in for the sandbox's image names.
demo=$(sed -E "s#image: ambit\.dev/demo/[a-z-]+:latest#image: $image#" "$src/sandbox/demo/manifests.yaml")
if grep -q 'ambit\.dev/demo/' <<<"$demo"; then
  echo "error: sandbox/demo/manifests.yaml names an image this script does not replace:" >&2
  grep 'ambit\.dev/demo/' <<<"$demo" >&2
  exit 1
fi
kubectl apply -f - <<<"$demo"
kubectl wait --for=condition=Available deployment --all -n demo --timeout=5m
kubectl get pods -n demo -o wide

if ambit check --help >/dev/null 2>&1; then
  log "ambit check"
  ambit check
else
  log "ambit check is not built yet (this checkout's ambit has no check command); skipped"
fi

log "a request from vote-bot to web through the mesh"
kubectl exec -n demo deploy/vote-bot -- python3 -c '
import urllib.request
with urllib.request.urlopen("http://web.demo.svc.cluster.local:8080/api/leaderboard", timeout=10) as resp:
    print(resp.status, resp.read(300).decode(errors="replace"))
'

log "demo traffic over mutual TLS, as the node agents count it (ambit_tcp_connections_opened_total)"
mapfile -t node_ips < <(kubectl get nodes -o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
deadline=$((SECONDS + 120))
while :; do
  for ip in "${node_ips[@]}"; do
    metrics=$(curl --silent --max-time 5 "http://$ip:15020/metrics" || true)
    if awk '/^ambit_tcp_connections_opened_total\{/ && /source_workload_namespace="demo"/ \
            && /connection_security_policy="mutual_tls"/ { found = 1 } END { exit !found }' <<<"$metrics"; then
      log "node $ip reports mutual-TLS connections from namespace demo"
      log "done: Ambit $version runs on $(kubectl get nodes --no-headers | wc -l) nodes; kubectl works here as root and as vagrant"
      exit 0
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: no node agent counted a mutual-TLS connection from namespace demo within 2 minutes" >&2
    echo "  look at: kubectl logs -n ambit-system -l app.kubernetes.io/component=node-agent --tail=50" >&2
    exit 1
  fi
  sleep 5
done
