"""Mesh state: frozen snapshots (workloads, services, endpoints, enrolment) built by one writer.

- ``snapshot``: the frozen values, the pure ``build`` from raw Kubernetes objects, and the holder
"""
