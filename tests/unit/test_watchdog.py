"""The slots a worker shares with its watchdog: what the watchdog reads after the worker died."""

from __future__ import annotations

import mmap
import subprocess
import sys

import pytest

from doctorjob.watchdog import SLOT, Watchdog, ids_in


@pytest.fixture
def watchdog():
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    slots = mmap.mmap(-1, (3 + 4) * SLOT)
    dog = Watchdog(process, slots, count=3, recording=4)
    yield dog, slots
    dog.close()
    assert process.returncode == 0  # the goodbye reached it and it exited


def test_the_slots_hold_the_running_jobs_and_the_ones_being_recorded(watchdog):
    dog, slots = watchdog
    a, b = dog.take_slot(), dog.take_slot()
    dog.running(a, 11)
    dog.running(b, 12)
    dog.running(b, 0)  # ended: its thread is free
    dog.recording([12, 13, 14])  # the worker saves their outcomes: should it die now, they pay
    assert ids_in(slots[:]) == {11, 12, 13, 14}
    dog.recording([15])  # the next round clears what the last one wrote
    assert ids_in(slots[:]) == {11, 15}
    dog.recording(range(20, 30))  # past the region: the first ones only
    assert ids_in(slots[:]) == {11, 20, 21, 22, 23}
    dog.recording(())
    dog.give_back(a)
    assert ids_in(slots[:]) == set()
    assert dog.take_slot() == a  # a freed slot is taken again
