#!/usr/bin/env bash
# Every node: build the Ambit image from the synced repository (deploy/image/Containerfile) and
# import it into containerd's k8s.io namespace, where the kubelet looks for images. There is no
# registry for ambit.dev/ambit: the chart is installed with image.pullPolicy=Never, so each node
# must hold the image itself. Running it again rebuilds from buildah's layer cache and re-imports.
# Env: AMBIT_SRC, the repository on the VM (default /vagrant).
set -euo pipefail
src=${AMBIT_SRC:-/vagrant}

log() { printf '==> %s: %s\n' "$(hostname)" "$*"; }

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  "$src/pyproject.toml")
image="ambit.dev/ambit:$version"

log "building $image from $src (base image and Python packages are downloaded; a few minutes)"
# --network host: RUN steps use the VM's network as it is, so buildah sets up none of its own
# (it would look for CNI configs in /etc/cni/net.d, the cluster's).
buildah bud --layers --network host \
  -f "$src/deploy/image/Containerfile" \
  --ignorefile "$src/deploy/image/Containerfile.dockerignore" \
  -t "$image" "$src"

log "importing $image into containerd (namespace k8s.io)"
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
buildah push --quiet "$image" "docker-archive:$workdir/ambit.tar:$image"
ctr --namespace k8s.io images import "$workdir/ambit.tar" >/dev/null
images=$(ctr --namespace k8s.io images list --quiet)
if ! grep -qxF "$image" <<<"$images"; then
  echo "error: containerd does not list $image after the import" >&2
  exit 1
fi
log "$image is in containerd"
