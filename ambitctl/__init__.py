"""``ambit``, the user's command line. It talks to a cluster (the API, later the agents' admin
endpoints and Prometheus) and imports no data-path module.

- ``chart``: Ambit's Helm chart rendered with Helm's own engine (``helm_python``): values from
  ``-f`` files and ``--set``, checked against ``values.schema.json`` before anything is applied
- ``apply``: server-side apply of rendered objects, pruning by label, deletion in order, and
  waiting for workloads the way ``helm --wait`` does
- ``install``: ``ambit install`` and ``ambit uninstall``
- ``check``: ``ambit check``, the health checks and their table/short/JSON output
- ``node``: ``ambit node redirection|certs``, one node's agent's view of the pods it captured
- ``explain``: ``ambit explain SRC DST``, one path hop by hop, the first broken link and its reason
- ``stat``: ``ambit stat deploy|ns``, MESHED and TCP_CONN per workload from the agents (HTTP needs a waypoint)
- ``cluster``: what these diagnostics read (cached per run), the agents' reports included
- ``cli``: the parser; other packages add commands through the ``ambit.commands`` entry point
  (the sandbox's ``up``/``down``/``sandbox``), so nothing here imports them
"""
