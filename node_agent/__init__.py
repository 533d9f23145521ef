"""Ambit's node agent: one per node, it carries enrolled pods' traffic over mutual TLS.

- ``inpod/``: enters each enrolled pod's network namespace, installs redirection, opens listeners there
- ``proxy/``: outbound (15001), inbound plaintext (15006) and tunnel (15008) listeners, one byte pump
- ``identity/``: the CA service and the per-service-account certificate manager
- ``discovery/``: list-then-watch of the Kubernetes API feeding ``state/`` snapshots
- ``metrics``: the TCP metrics; ``admin``: the endpoints (Prometheus on :15020, readiness on :15021,
  config dump on localhost:15000)
- ``agent``: the process that wires these together; ``settings``: its one settings tree, from env;
  ``lifecycle``: how it (and the waypoint) runs: uvloop, the API client, SIGTERM as the stop event
- ``cli``: ``ambit-agent``, the commands the Helm chart's containers run (agent, CA, CNI installer)
"""
