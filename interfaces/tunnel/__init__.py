"""The tunnel between Sandbar and local agents (docs/tunnel.md)."""
