import threading
import time

import pytest

from kf_desktop.queues import DropOldestQueue
from kf_desktop.stats import RollingStats


def test_drop_oldest_keeps_the_newest_two():
    q = DropOldestQueue(2)
    for i in range(5):
        q.put(i)
    assert len(q) == 2 and q.dropped == 3
    assert q.get(0) == 3 and q.get(0) == 4
    assert q.get(0.01) is None


def test_get_wakes_when_an_item_arrives():
    q = DropOldestQueue(2)
    t0 = time.monotonic()
    threading.Timer(0.05, q.put, args=("x",)).start()
    assert q.get(timeout=2.0) == "x"
    assert time.monotonic() - t0 < 1.0


def test_bad_size():
    with pytest.raises(ValueError):
        DropOldestQueue(0)


def test_rolling_stats_percentiles_and_rate():
    st = RollingStats(window=100)
    for v in range(1, 101):
        st.add("x", v)
    p = st.percentiles("x")
    assert 49 <= p["p50"] <= 52 and p["p95"] >= 94
    for i in range(11):
        st.tick("out", 10.0 + i * 0.1)
    assert st.rate("out", now=11.0) == pytest.approx(10.0)
    assert st.rate("out", now=11.05) == pytest.approx(10.0)  # not overdue yet
    snap = st.snapshot()
    assert "x" in snap["ms"]


def test_rates_decay_to_zero_when_nothing_flows():
    """Issue 13 item 5: a stage that stopped reports 0 fps, not its old rate."""
    st = RollingStats(window=300)
    t0 = time.monotonic() - 10.0
    for i in range(250):  # 25 fps for 10 s, ending 0.04 s ago
        st.tick("out", t0 + i * 0.04)
    assert st.rate("out") == pytest.approx(25.0, rel=0.1)
    assert st.snapshot()["fps"]["out"] == pytest.approx(25.0, rel=0.1)
    # 7 s into a pause (the GUI used to show the old rate here)
    assert st.rate("out", now=t0 + 17.0) == 0.0
    # half-way through the horizon it is on its way down
    assert 5.0 < st.rate("out", now=t0 + 11.0) < 20.0
    st2 = RollingStats()
    past = time.monotonic() - 5.0
    for i in range(30):
        st2.tick("engine", past + i / 30)
    assert st2.snapshot()["fps"]["engine"] == 0.0
