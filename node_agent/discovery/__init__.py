"""Discovery: list-then-watch the Kubernetes API with the official client.

- ``reflector``: one kind, one thread: list, watch from resourceVersion, relist on 410, backoff
"""
