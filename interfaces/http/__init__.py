"""The REST API of API.md."""
