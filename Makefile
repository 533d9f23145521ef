# Ambit: `make demo` and `make test` each install what they need on a fresh Debian 12 (as root).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
APT_PACKAGES := iproute2 iptables nftables containernetworking-plugins curl openssl tcpdump \
                procps psmisc kmod python3-venv prometheus iperf3 wrk nginx libnginx-mod-stream nghttp2-client
# vagrant validate (it needs a provider: vagrant-libvirt) and shellcheck check vagrant/; without
# their recommends (qemu, libvirt daemons): nothing here starts a VM
TOOL_APT_PACKAGES := vagrant vagrant-libvirt shellcheck
STAMP := $(VENV)/.ambit-installed
BENCH_APT_PACKAGES := iperf3 wrk nginx libnginx-mod-stream nghttp2-client
BENCH_ARGS ?=

.PHONY: deps venv demo test unit down clean bench

deps: $(STAMP)

$(STAMP): pyproject.toml .ci/install-kube-tools
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	@missing=""; for p in $(TOOL_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cli,test]'
	@# kubectl >= 1.28 and helm >= 3 into $(VENV)/bin unless the machine has them (Debian has no helm, kubectl 1.20)
	$(PY) .ci/install-kube-tools $(VENV)/bin
	@touch $(STAMP)

demo: deps
	$(VENV)/bin/ambit up --nodes 2 --demo
	@echo
	@echo "kubectl --kubeconfig \"\$$($(VENV)/bin/ambit sandbox kubeconfig)\" get pods -A -o wide"
	@echo "$(VENV)/bin/ambit down    # removes everything"

test: deps
	$(PY) -m pytest -q -ra tests

unit: deps
	$(PY) -m pytest -q -ra tests/unit

# Benchmark rig (docs/benchmarks.md): its own sandbox, ~10 min; results in bench/results/.
bench: deps
	@missing=""; for p in $(BENCH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	$(PY) -m bench $(BENCH_ARGS)

down:
	-$(VENV)/bin/ambit down

clean: down
	rm -rf $(VENV)
