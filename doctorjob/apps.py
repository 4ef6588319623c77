import django
from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


class DoctorJobConfig(AppConfig):
    name = "doctorjob"
    verbose_name = "Doctor Job"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            signal_handlers,
        )

        signal_handlers.connect()

        # Like admin.py: every installed app's jobs.py registers its handlers at start-up.
        autodiscover_modules("jobs")

        if django.VERSION >= (6, 0):  # django.tasks: the job type that runs them, if TASKS uses doctorjob
            from .backends import configured, register

            if configured(getattr(settings, "TASKS", None)):
                register()
