"""Extra handlers for tests/acceptance (owned by those tests)."""
