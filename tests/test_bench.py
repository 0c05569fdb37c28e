"""`aaclip bench` appends one row per measurement, with the device named."""

from __future__ import annotations

import pandas as pd

from aaclip.bench import run_bench


def test_bench_rows_appended_with_device(tmp_path):
    for _ in range(2):
        rows = run_bench(
            "aaclip-tiny", 64, 2, "cpu", "bf16", steps=1, out_dir=tmp_path, metrics_n=3, warmup=0
        )
    assert [r["what"] for r in rows][:3] == [
        "inference+scoring",
        "train step (text)",
        "train step (image)",
    ]
    table = pd.read_csv(tmp_path / "bench.csv")
    assert len(table) == 2 * len(rows)
    assert table.device.str.startswith("cpu").all()
    assert (table.precision == "fp32").all()  # bf16 autocast is GPU-only: recorded as run
    assert (table.dropna(subset=["images_per_s"]).images_per_s > 0).all()
    assert table.dropna(subset=["seconds"]).shape[0] == 4  # two metric timings per call
