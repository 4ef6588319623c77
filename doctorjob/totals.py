"""Running totals of finished attempts and dead letters, by queue and outcome, for the
metrics' Prometheus counters.

The execution history cannot serve as a counter: retention prunes it, and a count over it
would go down. So the worker holding the maintenance lease adds each new stretch of history
to ``OutcomeTotal``, whose rows are never pruned, and moves ``TotalsMark`` past it, in one
transaction. A stretch is counted once its newest row is ``LAG`` old by the database's clock:
an attempt is stamped when its finish statement starts, and a transaction still committing
would otherwise be passed over for good. Counting never touches the rows workers write, so the
drain pays nothing for it; the counters trail the history by ``LAG`` plus a round.
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
    with transaction.atomic(using=alias):
        # The lock serialises two workers that both believe they hold the maintenance lease.
        mark, _ = TotalsMark.objects.using(alias).select_for_update().get_or_create(pk=1)
        until = database_now(connections[alias]) - LAG
        since = mark.counted_until
        if since is not None and until <= since:
            return 0

        def window(field: str) -> Q:
            return Q(**{f"{field}__lt": until}) & (Q(**{f"{field}__gte": since}) if since else Q())

        added: dict[tuple[str, str], int] = {}
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
        for queue, outcome, n in attempts:
            added[queue, outcome] = n
        for queue, n in letters:
            added[queue, DEAD] = n
        totals = OutcomeTotal.objects.using(alias)
        for (queue, outcome), n in added.items():
            if not totals.filter(queue=queue, outcome=outcome).update(total=F("total") + n):
                totals.create(queue=queue, outcome=outcome, total=n)
        mark.counted_until = until
        mark.save(update_fields=["counted_until"])
    return sum(added.values())


def totals(using: str | None = None) -> list[OutcomeTotal]:
    """Every total, by queue then outcome."""
    alias = using or router.db_for_read(OutcomeTotal)
    return list(OutcomeTotal.objects.using(alias).order_by("queue", "outcome"))
