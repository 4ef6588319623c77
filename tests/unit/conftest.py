"""Unit tests use no database: pytest-django refuses any query made without a django_db mark."""

from __future__ import annotations

import pytest

from doctorjob import registry as registry_module


@pytest.fixture
def isolated_registry():
    """Let a test register jobs, and forget them afterwards."""
    saved = dict(registry_module.registry)
    yield registry_module.registry
    registry_module.registry.clear()
    registry_module.registry.update(saved)
