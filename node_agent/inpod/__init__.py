"""In-pod redirection: the agent's hands inside each enrolled pod's network namespace.

- ``cni_server``: the agent's end of the CNI plugin's unix socket; decodes ``cni.protocol``
  requests (ADD/DEL/CHECK for one pod) and awaits an injected handler for the answer
- ``netns``: ``PodNetns`` handles and one worker thread that enters a netns to make sockets
  there: the 15001/15006/15008 listeners and the agent's outgoing sockets (SO_MARK 0x539)
- ``redirect_iptables``: the pod's nat rules (outbound TCP -> 15001, inbound TCP -> 15006,
  15008, loopback, probes and marked sockets exempt), installed in one ``iptables-restore``
  inside the netns, read back as installed/partial/absent; and the node's probe SNAT
- ``sockopt``: SO_MARK, IP_TRANSPARENT, SO_ORIGINAL_DST (a redirected connection's destination)
- ``errors``: ``InpodError`` and its few subclasses

Enrolment decisions (which pods) and the wiring of these pieces live in the agent, not here.
"""
