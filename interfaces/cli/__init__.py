"""The ``sandbar`` command."""
