"""The REST API of docs/api.md."""
