"""The node agent's L4 proxy (being built; see docs/tunnel.md)."""
