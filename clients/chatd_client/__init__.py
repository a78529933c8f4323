"""chatd Python SDK."""
