"""Running totals of finished attempts and dead letters, by queue and outcome, for the
metrics' Prometheus counters.

The execution history cannot serve as a counter: retention prunes it, and a count over it
would go down. So the worker holding the maintenance lease adds each new stretch of history
to ``OutcomeTotal``, whose rows are never pruned, and moves ``TotalsMark`` past it, in one
transaction that moves the mark only from where the round began: no stretch is counted twice.
A stretch is counted once it is ``LAG`` old by the database's clock: an attempt is stamped when
its finish statement starts, and a transaction still committing would otherwise be passed over
for good. Counting never touches the rows workers write, so the drain pays nothing for it; the
counters trail the history by ``LAG`` plus a round.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connections, router, transaction
from django.db.models import Count, F, Q

from .db import database_now
from .models import DeadLetter, JobExecution, OutcomeTotal, TotalsMark

LAG = timedelta(seconds=30)
COUNT_EVERY = 15.0  # seconds between rounds, on the maintenance thread
DEAD = "dead"


def count(alias: str) -> int:
    """Add the attempts and dead letters finished since the last round (and at least ``LAG``
    ago) to the totals; returns how many were added. The first round counts all the history."""
    marks = TotalsMark.objects.using(alias)
    since = marks.get_or_create(pk=1)[0].counted_until
    until = database_now(connections[alias]) - LAG
    if since is not None and until <= since:
        return 0

    def window(field: str) -> Q:
        return Q(**{f"{field}__lt": until}) & (Q(**{f"{field}__gte": since}) if since else Q())

    # Read before the transaction, which is then short and starts with a write: SQLite cannot
    # turn a transaction that has read into one that writes while another connection writes.
    attempts = (
        JobExecution.objects.using(alias)
        .filter(window("finished_at"))
        .values_list("job__queue", "outcome")
        .annotate(n=Count("pk"))
        .order_by()
    )
    letters = (
        DeadLetter.objects.using(alias)
        .filter(window("created_at"))
        .values_list("queue")
        .annotate(n=Count("pk"))
        .order_by()
    )
    added = {(queue, outcome): n for queue, outcome, n in attempts}
    added.update({(queue, DEAD): n for queue, n in letters})
    with transaction.atomic(using=alias):
        # Moved only from where this round began: a worker that counted the same stretch first
        # (two that both believe they hold the maintenance lease) leaves this one nothing to add.
        if not marks.filter(pk=1, counted_until=since).update(counted_until=until):
            return 0
        totals = OutcomeTotal.objects.using(alias)
        for (queue, outcome), n in added.items():
            if not totals.filter(queue=queue, outcome=outcome).update(total=F("total") + n):
                totals.create(queue=queue, outcome=outcome, total=n)
    return sum(added.values())


def totals(using: str | None = None) -> list[OutcomeTotal]:
    """Every total, by queue then outcome."""
    alias = using or router.db_for_read(OutcomeTotal)
    return list(OutcomeTotal.objects.using(alias).order_by("queue", "outcome"))
