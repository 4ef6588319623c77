from __future__ import annotations

from django.core import signing

from doctorjob import PermanentError, job

from .models import Client


@job(
    "accounts.send_login_link",
    queue="emails",
    max_attempts=5,
    schema={
        "type": "object",
        "required": ["client_id"],
        "properties": {"client_id": {"type": "integer"}},
    },
)
def send_login_link(payload, ctx):
    """Pretend to e-mail a signed login link; a client that no longer exists is not worth retrying."""
    try:
        client = Client.objects.get(pk=payload["client_id"])
    except Client.DoesNotExist:
        raise PermanentError(f"client {payload['client_id']} does not exist") from None
    token = signing.dumps(client.pk, salt="login-link")
    ctx.logger.info("login link sent to=%s link=/login/%s/", client.email, token)
    return {"sent_to": client.email}


@job("accounts.reticulate_splines", max_attempts=3, backoff={"base": 0.2, "factor": 2, "cap": 1})
def reticulate_splines(payload, ctx):
    """Always fail, so the demo shows retries ending in a dead letter."""
    raise RuntimeError("splines refuse to reticulate")


# A report written from several fetches: one child per day counts that day's sign-ups, and the
# report, their parent, runs once every count is in (services.request_signup_report).
@job("accounts.count_signups", max_attempts=3)
def count_signups(payload, ctx):
    """One fetch: the sign-ups of one day (a stand-in for a slow call to another system)."""
    return {"day": payload["day"], "signups": Client.objects.filter(created_at__date=payload["day"]).count()}


@job("accounts.write_signup_report")
def write_signup_report(payload, ctx):
    """Combine the fetches' counts; the days whose fetch failed for good are left out and counted."""
    counts = {r["day"]: r["signups"] for r in ctx.children_results().values()}
    return {
        "signups": dict(sorted(counts.items())),
        "total": sum(counts.values()),
        "failed_fetches": len(ctx.failed_children()),
    }
