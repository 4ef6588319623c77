"""What keeps the admin's lists fast on a million jobs: a paginator that asks the planner
instead of counting every row, and filters whose choices come from the job definitions
rather than a ``SELECT DISTINCT`` over the jobs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import OperationalError, connections, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from ..models import JobDefinition, QueueState

T = TypeVar("T")

# A list whose plan says more rows than this shows the planner's estimate, not a count.
ESTIMATE_ABOVE = 10_000
# Milliseconds an exact count may take before the estimate is shown instead (a search over
# text the planner cannot estimate well would otherwise read every row).
COUNT_BUDGET_MS = 100


class EstimatingPaginator(Paginator):  # type: ignore[type-arg]
    """On PostgreSQL, count exactly only when the planner expects few rows and the count ends
    within COUNT_BUDGET_MS; otherwise use the planner's estimate and set ``estimated`` (the
    pagination template then says "about N (estimate)")."""

    estimated = False

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or connections[queryset.db].vendor != "postgresql":
            return super().count
        planned = _planned_rows(queryset)
        self.estimated = True
        if planned > ESTIMATE_ABOVE:
            return planned
        try:
            count = _count_within(queryset, COUNT_BUDGET_MS)
        except OperationalError:  # cancelled by the statement timeout: more rows than the plan says
            # At least two pages, whatever the planner thought: with one page the admin would
            # fetch every matching row instead of one page of them.
            return max(planned, self.per_page + 1)
        self.estimated = False
        return count


def _count_within(queryset: QuerySet[Any], budget_ms: int) -> int:
    return within(queryset.db, budget_ms, queryset.count)


def within(alias: str, budget_ms: int, query: Callable[[], T]) -> T:
    """Run ``query`` under a PostgreSQL statement timeout of ``budget_ms`` (OperationalError past
    it), in a savepoint whose rollback also undoes the timeout. Other databases: no limit."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return query()
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        previous = cursor.fetchone()[0]
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(budget_ms)])
        result = query()
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
        return result


def _planned_rows(queryset: QuerySet[Any]) -> int:
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class DefinedValueFilter(admin.SimpleListFilter):
    """A filter whose choices are the definitions' values (plus, for queues, the paused ones)."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        values = set(JobDefinition.objects.values_list(self.field, flat=True))
        if self.field == "queue":
            values |= set(QueueState.objects.values_list("name", flat=True))
        if self.value():  # a link's value (a retired job, an undeclared queue) still filters
            values.add(str(self.value()))
        return [(v, v) for v in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class QueueFilter(DefinedValueFilter):
    title = "queue"
    parameter_name = field = "queue"


class NameFilter(DefinedValueFilter):
    title = "name"
    parameter_name = field = "name"


def defined_names(term: str) -> list[str]:
    """The names of the definitions that contain ``term`` (case-insensitive)."""
    return list(JobDefinition.objects.filter(name__icontains=term).values_list("name", flat=True)[:200])
