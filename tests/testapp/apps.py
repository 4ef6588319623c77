import django
from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if django.VERSION >= (6, 0):
            from . import tasks  # noqa: F401  (its signal receivers, when a test asks for them)
