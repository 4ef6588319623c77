"""How the admin shows jobs' values: status badges, JSON pretty-printed and wrapped, tracebacks
folded, times to the second in the project's time zone, durations in milliseconds.

Everything user-supplied goes through ``format_html``, so it is escaped.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

EMPTY = "-"


def badge(status: str, colour: str | None = None) -> SafeString:
    """A status as a coloured badge (colours by status in templates/admin/doctorjob/styles.html)."""
    return format_html('<span class="dj-badge dj-{}">{}</span>', colour or status, status)


def pre(text: str) -> SafeString | str:
    return format_html('<pre class="dj-pre">{}</pre>', text) if text else EMPTY


def pretty_json(value: Any) -> SafeString | str:
    return pre(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


def folded(text: str, summary: str = "Traceback") -> SafeString | str:
    """Long text such as a traceback, folded under its last line (where Python puts the error)."""
    if not text:
        return EMPTY
    last = Truncator(text.rstrip().rpartition("\n")[2].strip()).chars(160)
    return format_html(
        '<details class="dj-fold"><summary>{}: {}</summary><pre class="dj-pre">{}</pre></details>', summary, last, text
    )


def when(value: datetime | None) -> str:
    """A time to the second, in the project's time zone (settings.TIME_ZONE)."""
    if value is None:
        return EMPTY
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if timezone.is_aware(value) else str(value)


def milliseconds(value: timedelta | None) -> str:
    if value is None:
        return EMPTY
    return f"{value.total_seconds() * 1000:,.0f} ms"


def age(value: timedelta | None) -> str:
    """A wait as the largest two units: '3 s', '4 min 10 s', '2 h 5 min', '3 d 4 h'."""
    if value is None:
        return EMPTY
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def zone() -> str:
    """The name of the time zone times are shown in, for column headers."""
    return timezone.get_current_timezone_name()
