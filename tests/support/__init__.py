"""Helpers that start real services (redis-server, Label Studio) for tests and demos."""
