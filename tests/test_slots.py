"""Studios sharing one machine take turns (federated/studio/slots.py): never more than N train at once, a dead studio
frees its slot, and a deployment without slots never waits."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

import fedgai.federated.studio.slots as slots
from fedgai.federated.studio.slots import SLOTS_ENV, parse_slots, slots_spec, training_slot


@pytest.fixture(autouse=True)
def _no_settling(monkeypatch):
    """No queueing time before a studio's first try, except where a test sets one."""
    monkeypatch.setattr(slots, "SETTLE_S", 0.0)


def test_at_most_n_studios_hold_a_slot_at_once(tmp_path):
    spec = slots_spec(tmp_path / "slots", 2)
    inside, most, guard = [0], [0], threading.Lock()

    def studio():
        with training_slot(spec):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.3)
            with guard:
                inside[0] -= 1

    workers = [threading.Thread(target=studio) for _ in range(5)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert most[0] == 2
    assert time.perf_counter() - started >= 0.9  # 5 turns of 0.3 s through 2 slots: at least 3 rounds of turns


def test_the_wait_is_measured_and_no_slots_means_no_wait(tmp_path, monkeypatch):
    monkeypatch.delenv(SLOTS_ENV, raising=False)
    with training_slot() as waited:
        pass
    assert waited.seconds == 0.0
    spec = slots_spec(tmp_path, 1)
    held = threading.Event()

    def holder():
        with training_slot(spec):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    with training_slot(spec) as waited:
        pass
    thread.join()
    assert waited.seconds >= 0.3


def _die_holding_a_slot(spec: str) -> None:
    with training_slot(spec):
        os._exit(3)  # a studio process that crashes mid-round


def test_a_studio_that_dies_frees_its_slot(tmp_path):
    spec = slots_spec(tmp_path, 1)
    child = multiprocessing.get_context("fork").Process(target=_die_holding_a_slot, args=(spec,))
    child.start()
    child.join(10)
    assert child.exitcode == 3
    with training_slot(spec) as waited:
        pass
    assert waited.seconds < 1.0


def test_malformed_slots_are_refused_with_the_variable_named(tmp_path):
    for bad in ("no-count", f"{tmp_path}:0", f"{tmp_path}:two", ":2"):
        with pytest.raises(ValueError, match=f"{SLOTS_ENV} must be '<folder>:<N>' with N >= 1"):
            parse_slots(bad)
    with pytest.raises(ValueError, match="at least 1"):
        slots_spec(tmp_path, 0)
    assert parse_slots(slots_spec(tmp_path, 3)) == (tmp_path, 3)



def test_the_largest_waiting_studio_goes_first(tmp_path):
    """Longest jobs first: the round does not end with one large studio training alone."""
    spec = slots_spec(tmp_path, 1)
    held, release, order = threading.Event(), threading.Event(), []

    def holder():
        with training_slot(spec):
            held.set()
            release.wait()

    def studio(name: str, work: float):
        with training_slot(spec, work=work):
            order.append(name)

    first = threading.Thread(target=holder)
    first.start()
    held.wait()
    waiters = [threading.Thread(target=studio, args=(name, work)) for name, work in
               [("small", 28), ("large", 96), ("medium", 48)]]
    for w in waiters:
        w.start()
    while len(list((tmp_path / "waiting").iterdir())) < 3:  # all three queued
        time.sleep(0.05)
    release.set()
    for w in [first, *waiters]:
        w.join()
    assert order == ["large", "medium", "small"]
    assert not list((tmp_path / "waiting").iterdir())  # no ticket left behind


def test_a_dead_studios_place_in_the_queue_is_dropped(tmp_path):
    spec = slots_spec(tmp_path, 1)
    queue = tmp_path / "waiting"
    queue.mkdir()
    dead = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (queue / f"{dead.pid}_deadbeef_1000").touch()  # a large studio that died while waiting
    with training_slot(spec, work=1) as waited:
        pass
    assert waited.seconds < 1.0 and not list(queue.iterdir())


def test_studios_arriving_together_are_ordered_by_size_not_arrival(tmp_path, monkeypatch):
    """A round's tasks reach the studios a little apart: the small studio that arrives first still waits for
    the large one that arrives just after it."""
    monkeypatch.setattr(slots, "SETTLE_S", 0.5)
    spec, order = slots_spec(tmp_path, 1), []

    def studio(name: str, work: float):
        with training_slot(spec, work=work):
            order.append(name)
            time.sleep(0.1)

    small = threading.Thread(target=studio, args=("small", 28))
    large = threading.Thread(target=studio, args=("large", 96))
    small.start()
    time.sleep(0.2)  # the large studio's task arrives 0.2 s later
    large.start()
    for t in (small, large):
        t.join()
    assert order == ["large", "small"]


def test_a_stray_or_malformed_file_in_the_queue_does_not_stop_it(tmp_path):
    """Issue 24 §4: old code split every name in the queue folder into three fields and crashed the studio on
    anything else (a README, an editor's backup, a folder)."""
    queue = tmp_path / "slots" / "waiting"
    queue.mkdir(parents=True)
    for name in ("README", "notes_x", "1_abc_lots", "x_y_1", "1_a_nan", ".nfs0001_2_3", "9_a_b_c"):
        (queue / name).write_text("")
    (queue / "1_dir_5").mkdir()
    with training_slot(slots_spec(tmp_path / "slots", 1), work=3) as waited:
        assert waited.seconds < 5
    assert (queue / "README").exists()  # not the studio's to remove
