"""Finding the first value JSON cannot carry, and naming where it is; no database."""

from __future__ import annotations

import math
from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

import pytest

from doctorjob import InvalidPayload
from doctorjob.payloads import check_json


@pytest.mark.parametrize(
    "payload",
    [
        {},
        None,
        [],
        "text",
        {"a": [1, 2.5, True, None, "x", {"b": []}], "t": (1, 2)},
        {"big": 2**70, "negative": -1.5e300},
    ],
    ids=["empty", "none", "list", "string", "nested", "numbers"],
)
def test_json_payload_passes(payload):
    check_json(payload, "unit.job")


@pytest.mark.parametrize(
    ("payload", "where", "type_name"),
    [
        ({"when": datetime(2026, 1, 1)}, "payload['when']", "datetime"),
        ({"day": date(2026, 1, 1)}, "payload['day']", "date"),
        ({"amount": Decimal("1.10")}, "payload['amount']", "Decimal"),
        ({"id": UUID(int=1)}, "payload['id']", "UUID"),
        ({"ratio": math.nan}, "payload['ratio']", "float"),
        ({"limit": math.inf}, "payload['limit']", "float"),
        ({"floor": -math.inf}, "payload['floor']", "float"),
        ({"tags": {"a"}}, "payload['tags']", "set"),
        ({"raw": b"\x00"}, "payload['raw']", "bytes"),
        ({"m": {1: "one"}}, "payload['m'] key 1", "int"),
        ({("a", "b"): 1}, "payload key ('a', 'b')", "tuple"),
        ({"a": [0, [1, {"b": object()}]]}, "payload['a'][1][1]['b']", "object"),
        (datetime(2026, 1, 1), "payload", "datetime"),
    ],
    ids=[
        "datetime",
        "date",
        "decimal",
        "uuid",
        "nan",
        "inf",
        "-inf",
        "set",
        "bytes",
        "int-key",
        "tuple-key",
        "deeply-nested",
        "top-level",
    ],
)
def test_error_names_the_key_path_and_type(payload, where, type_name):
    with pytest.raises(InvalidPayload) as excinfo:
        check_json(payload, "unit.job")
    message = str(excinfo.value)
    assert message.startswith(f"{where} of job 'unit.job' is a {type_name} (")
    assert message.endswith("which is not JSON-serialisable")


def test_the_first_bad_value_is_reported():
    with pytest.raises(InvalidPayload, match=r"payload\['first'\]"):
        check_json({"ok": 1, "first": {1}, "second": {2}}, "unit.job")


def test_long_values_are_shortened_in_the_message():
    with pytest.raises(InvalidPayload) as excinfo:
        check_json({"blob": b"x" * 10_000}, "unit.job")
    assert len(str(excinfo.value)) < 300


def test_invalid_payload_is_a_value_error():
    assert issubclass(InvalidPayload, ValueError)
