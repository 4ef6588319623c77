from django.db import models


class Client(models.Model):
    email = models.EmailField(unique=True)


class Run(models.Model):
    """One row per handler run; the unique constraint makes a double run fail loudly."""

    job_id = models.BigIntegerField(unique=True)
    pid = models.IntegerField(default=0)


class Effect(models.Model):
    """A write made by an atomic=True handler."""

    job_id = models.BigIntegerField()
