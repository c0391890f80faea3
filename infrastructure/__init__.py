"""Adapters: settings, the event store on PostgreSQL, credentials, password hashing."""
