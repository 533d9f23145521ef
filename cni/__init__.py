"""Ambit's CNI plugin, chained after the primary CNI: it hands enrolled pods to the node agent.

- ``plugin``: the ``ambit-cni`` executable (ADD/DEL/CHECK/VERSION); passes ``prevResult`` through
- ``spec``: the CNI side, pure: stdin config, ``CNI_*`` environment, results and error codes
- ``protocol``: the versioned, length-prefixed JSON messages between plugin and node agent (pure)
- ``agent_client``: the plugin's blocking unix-socket client, one request per connection
- ``install``: the DaemonSet's installer: writes the executable, patches the primary conflist, and
  unchains it again when its DaemonSet is gone (an uninstall, not a rolling update)

Everything the plugin imports is standard library and cheap (it starts once per pod sandbox);
nothing here imports ``node_agent``.
"""
