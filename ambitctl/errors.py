"""The CLI's errors: each message says what went wrong and what to do; ``cli.main`` prints it."""
from __future__ import annotations


class AmbitctlError(Exception):
    """a user-facing failure of an ``ambit`` command"""


class ChartError(AmbitctlError):
    """the chart could not be loaded or rendered with these values (nothing was applied)"""


class ClusterError(AmbitctlError):
    """the cluster refused or did not answer"""
