"""The demo application: emojivoto's picture in the standard library, one module per service.

- ``emoji``: the emoji list and lookup (``/api/list``, ``/api/find``)
- ``voting``: counts votes (``/api/vote``, ``/api/results``); ``:doughnut:`` fails with 500 on purpose
- ``web``: the page and API users call; asks emoji, then voting; propagates the failure as 500
- ``vote_bot``: steady random votes through web, failures logged (``--count`` to stop)
- ``service``: the shared JSON/HTTP server and client; ``upstream``: finds a Service's ClusterIP
  through the in-cluster API (no DNS in the sandbox) or takes ``<NAME>_ADDR=host:port``
- ``manifests.yaml`` (read with ``manifests.load()``): namespace ``demo``, service accounts,
  Deployments and Services
"""
