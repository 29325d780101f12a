"""`kf-desktop bench --serving` runs on the CPU and prints its figures (a
short run: the full one is a benchmark, not a test)."""

from __future__ import annotations

import json

from engine import bench_serving


def test_serving_bench_json_has_the_figures(capsys):
    assert bench_serving.main(["--json", "--streams", "3", "--seconds", "0.6"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["scenarios"]) == {"switch", "join", "join+switch"}
    for sc in doc["scenarios"].values():
        assert "worst_gap_periods" in sc and "effective_throughput_ratio" in sc
        for eng in ("serving", "naive"):
            assert {"gap_p50_periods", "gap_p95_periods", "gap_p99_periods", "worst_gap_periods",
                    "effective_streams"} <= set(sc[eng])


def test_serving_bench_table():
    res = bench_serving.run("tiny", streams=2, seconds=0.5)
    text = bench_serving.format_table(res)
    assert "serving" in text and "naive" in text and "worst" in text
