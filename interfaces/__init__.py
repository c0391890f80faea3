"""The outside: the HTTP API, the CLI. The only layer that knows HTTP."""
