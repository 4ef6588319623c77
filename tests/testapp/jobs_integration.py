"""Extra handlers for tests/integration and tests/unit (owned by those tests)."""
