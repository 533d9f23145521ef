"""Discovery: list-then-watch the Kubernetes API with the official client.

- ``client``: the official client, configured in-cluster or from a kubeconfig
- ``reflector``: one kind, one thread: list, watch from resourceVersion, relist on 410, backoff
"""
