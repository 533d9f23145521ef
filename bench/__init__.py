"""Ambit's benchmark rig (``make bench``; docs/benchmarks.md). A benchmark is not a test: speed goals live here.

- ``run``: the phases -- topology, path checks, memory, interleaved load, CNI latency, cleanup -- and the report;
- ``topology``: the rig's own sandbox, the bench pods, the node agents' pids and metrics;
- ``nginx`` + ``pki``: the HTTP server in the server pods and the nginx-mtls relay pair (the C peer);
- ``tools``: iperf3 and wrk inside the client pod's netns (``wrk_report.lua``), ``holdconns`` for idle
  connections; ``cni_latency``: the installed ambit-cni timed directly;
- ``procs``: the processes the rig starts (all stopped on exit) and /proc readings (CPU, RSS);
- ``report``: medians, ratios, targets, Markdown and JSON in ``bench/results/``.
"""
