"""doctorjob.backends needs Django 6 (django.tasks): on Django 5.2 importing it says so."""

from __future__ import annotations

import importlib
import sys

import django
import pytest
from django.core.exceptions import ImproperlyConfigured


def test_importing_the_tasks_backend_needs_django_6():
    if django.VERSION >= (6, 0):
        backends = importlib.import_module("doctorjob.backends")
        assert backends.DoctorJobBackend.supports_get_result
        return
    sys.modules.pop("doctorjob.backends", None)  # a failed import leaves nothing behind; to be sure
    with pytest.raises(ImproperlyConfigured, match=r"needs Django 6\.0 or later .* this is Django 5\.2"):
        importlib.import_module("doctorjob.backends")
