"""What every doctorjob admin shares: read-only change forms, and the one-sentence report of
what a bulk action did and skipped."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.http import HttpRequest

from .. import operations


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def report(
    model_admin: admin.ModelAdmin[Any], request: HttpRequest, done: str, result: operations.Bulk, noun: str = "job"
) -> None:
    """One message: what was done, then in the same sentence what was skipped and why."""
    message = done
    reasons = list(result.skipped.items())
    if len(reasons) == 1:
        message += f"; skipped {plural(reasons[0][1], noun)} {reasons[0][0]}"
    elif reasons:
        message += f"; skipped {plural(result.skipped_count, noun)}: " + ", ".join(f"{n:,} {r}" for r, n in reasons)
    model_admin.message_user(request, message + ".", messages.SUCCESS if result.changed else messages.WARNING)


if TYPE_CHECKING:  # generic for type checkers only: Django's classes take no [] at run time
    _ModelAdmin = admin.ModelAdmin[Any]
    _TabularInline = admin.TabularInline[Any, Any]
else:
    _ModelAdmin, _TabularInline = admin.ModelAdmin, admin.TabularInline


class ReadOnlyAdmin(_ModelAdmin):
    """Rows change only through explicit actions: no add, and a change form that cannot save.

    A saved change form would write back every field as it was read, overwriting whatever a
    worker wrote in between.
    """

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Without obj this is the permission that actions declared with permissions=["change"]
        # check; with obj it is the change form, which stays view-only.
        return obj is None and super().has_change_permission(request)

    # Site-wide actions (Django's delete_selected) this admin leaves out.
    without_actions: tuple[str, ...] = ()

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # action_location: Django 6.1 passes it (and warns about an override without it).
        where = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **where)
        for name in self.without_actions:
            actions.pop(name, None)
        return actions

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return flatten_fieldsets(self.get_fieldsets(request, obj))
