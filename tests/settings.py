"""Settings for doctorjob's own tests: SQLite by default, any DATABASE_URL otherwise."""

import os

import django
import environ

env = environ.Env()
DATABASE_URL = env("DATABASE_URL", default="sqlite:////tmp/doctorjob-tests.sqlite3")

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["testserver", "localhost"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the admin's CSS in the browser tests (live_server serves it)
    "doctorjob",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not :memory:, so worker processes started by the tests see the same database.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("DOCTORJOB_TEST_SQLITE", "/tmp/doctorjob-test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"doctorjob": {"handlers": ["console"], "level": env("DOCTORJOB_LOG_LEVEL", default="INFO")}},
}

# Relays (doctorjob.relays) for the relay tests, each test naming its own broker database, queue
# and exchange through the environment of the relay processes it starts.
DOCTORJOB = {
    "RELAYS": {
        "celery": {
            "BACKEND": env("DOCTORJOB_TEST_CELERY_BACKEND", default="doctorjob.relays.CeleryRelay"),
            "OPTIONS": {
                "app": "tests.relay.celery_app.app",
                "queue": env("DOCTORJOB_TEST_CELERY_QUEUE", default="doctorjob-tests"),
                **({"marker": env("DOCTORJOB_TEST_MARKER")} if env("DOCTORJOB_TEST_MARKER", default="") else {}),
            },
        },
        "rabbitmq": {
            "BACKEND": "doctorjob.relays.KombuRelay",
            "OPTIONS": {
                "url": env("DOCTORJOB_TEST_AMQP", default="amqp://guest:guest@127.0.0.1:5672//"),
                "exchange": env("DOCTORJOB_TEST_EXCHANGE", default="doctorjob-tests"),
            },
            "QUEUES": ["to-rabbitmq"],
        },
        "redis": {
            "BACKEND": "doctorjob.relays.KombuRelay",
            "OPTIONS": {
                "url": env("DOCTORJOB_TEST_REDIS", default="redis://127.0.0.1:6379/7"),
                "exchange": env("DOCTORJOB_TEST_EXCHANGE", default="doctorjob-tests"),
            },
            "QUEUES": ["to-redis"],
        },
        "custom": {
            "BACKEND": "tests.testapp.relays.FileRelay",
            "OPTIONS": {
                "path": env("DOCTORJOB_TEST_RELAY_FILE", default="/tmp/doctorjob-relay-tests.jsonl"),
                "fail": env("DOCTORJOB_TEST_RELAY_FAIL", default=""),
                "down": env("DOCTORJOB_TEST_RELAY_DOWN", default=""),
            },
        },
    }
}
if django.VERSION >= (6, 0):
    # Django's Tasks API, run by doctorjob (tests/*/test_tasks*.py; tests/testapp/tasks.py).
    TASKS = {
        "default": {"BACKEND": "doctorjob.backends.DoctorJobBackend", "QUEUES": ["default", "tasks-urgent"]},
        "retrying": {"BACKEND": "doctorjob.backends.DoctorJobBackend", "OPTIONS": {"MAX_ATTEMPTS": 2}},
    }
