"""`make reproduce`: build the data the profile needs, then run every notebook with papermill.

Executed notebooks go to `results/executed/`, tables to `results/tables/`, figures to
`results/figures/`, and each notebook's key numbers to `results/summaries/<name>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebooks() -> list[Path]:
    """The ordered notebooks (`NN_name.ipynb`)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def ensure_data(profile: str, data: Path, results: Path) -> None:
    """Build the embedded synthetic dataset for the smoke profile (if needed) and its montage."""
    if profile != "smoke":
        return
    from data_prep.synthetic import build, montage

    target = data / "synthetic"
    if (target / "dataset.json").is_file():
        print(f">> embedded dataset present: {target}")
    else:
        t0 = time.time()
        build(target, seed=0)
        print(f">> built the embedded dataset in {time.time() - t0:.1f} s: {target}")
    print(f">> montage: {montage(target, results / 'figures' / 'synthetic_montage.png')}")


def run(profile: str, data: Path, results: Path, runs: Path, only: list[str] | None) -> int:
    import papermill as pm

    if profile == "smoke":
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny tensors: threads only add overhead
    ensure_data(profile, data, results)
    executed = results / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    selected = [nb for nb in notebooks() if not only or any(o in nb.stem for o in only)]
    if not selected:
        print(f"no notebooks match {only} in {NOTEBOOKS}", file=sys.stderr)
        return 2
    t_all = time.time()
    for nb in selected:
        t0 = time.time()
        print(f">> {nb.name} ({profile})", flush=True)
        pm.execute_notebook(
            str(nb),
            str(executed / nb.name),
            parameters={
                "profile": profile,
                "data_root": str(data / "synthetic") if profile == "smoke" else str(data),
                "results_dir": str(results),
                "runs_dir": str(runs),
            },
            cwd=str(ROOT),
            kernel_name="python3",
            progress_bar=False,
        )
        print(f"   done in {time.time() - t0:.0f} s", flush=True)
    print(f">> all {len(selected)} notebooks in {time.time() - t_all:.0f} s; outputs in {results}/")
    for summary in sorted((results / "summaries").glob("*.json")):
        print(f"   {summary.name}: {json.dumps(json.loads(summary.read_text()))[:160]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--only", nargs="*", help="run only notebooks whose name contains these")
    args = p.parse_args(argv)
    try:
        return run(args.profile, args.data, args.results, args.runs, args.only)
    except Exception as err:  # papermill wraps the failing cell; show its one-line reason
        name = type(err).__name__
        print(f"reproduce: {name}: {str(err).strip().splitlines()[-1] if str(err) else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
