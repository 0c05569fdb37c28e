"""`make reproduce`: build the data the profile needs, then run every notebook with papermill.

Executed notebooks go to `results/executed/` (not tracked), tables to `results/tables/`,
figures to `results/figures/`, each notebook's key numbers to `results/summaries/<name>.json`
and an index of every table and figure to `results/REPORT.md`. While a notebook runs, its
progress lines (`▸ …`) are shown; after it, its key numbers.

`--store-outputs` (`make notebooks`) instead executes the committed notebooks the way nbval
does (smoke, quick mode, a scratch folder) and stores the outputs of their checked summary
cells in the committed files, which is what `make test` compares against.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHECK = "# NBVAL_CHECK_OUTPUT"  # first line of a cell whose output nbval compares
# The kernel's own start-up/shutdown log lines (plain-TCP notice, interrupt at shutdown) are
# not about the notebook; cell output, warnings and errors still land in the executed file.
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
KERNEL_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1", "MPLBACKEND": "Agg"}
# The smoke notebooks run one kernel path on every x86-64 CPU with AVX2: ATen's AVX2 kernels
# and MKL's AVX2 conditional-numerical-reproducibility branch, one thread. float64 alone does
# not suffice: training is chaotic, so the last bits that AVX-512, AVX2 and scalar kernels
# round differently grow to 1e-4 in a 20-epoch run. The cost is about 1.3x on an AVX-512 CPU.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
UNPINNED = ("MKL_ENABLE_INSTRUCTIONS",)  # a user's restriction would pick another MKL branch


def pin_kernels(env: dict | None = None) -> dict:
    """`env` (default: this process's) with the portable kernel path of the smoke profile."""
    env = os.environ if env is None else env
    env.update(PORTABLE_KERNELS)
    for key in UNPINNED:
        env.pop(key, None)
    return env


def notebooks() -> list[Path]:
    """The ordered notebooks (`NN_name.ipynb`)."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def ensure_data(profile: str, data: Path, results: Path) -> None:
    """Build the embedded synthetic dataset for the smoke profile (if needed) and its montage."""
    if profile != "smoke":
        return
    from aaclip.analysis import ensure_synthetic
    from data_prep.synthetic import montage

    target = data / "synthetic"
    t0 = time.time()
    if ensure_synthetic(target, verbose=False):
        print(f">> built the embedded dataset in {time.time() - t0:.1f} s: {target}")
    else:
        print(f">> embedded dataset present: {target}")
    print(f">> montage: {montage(target, results / 'figures' / 'synthetic_montage.png')}")


class Progress:
    """A file-like sink for a kernel's stdout: shows the `▸` progress lines, indented."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.buffer = ""

    def write(self, text: str) -> int:
        from aaclip.analysis.notebook import PROGRESS

        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.startswith(PROGRESS):
                self.out.write(f"   {line}\n")
                self.out.flush()
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def key_numbers(summary_file: Path) -> str:
    from aaclip.analysis import key_numbers_text

    s = json.loads(summary_file.read_text())
    return key_numbers_text(s["notebook"], s["profile"], s["quick"], s.get("key_numbers", {}))


def run(profile: str, data: Path, results: Path, runs: Path, only: list[str] | None) -> int:
    import papermill as pm

    if profile == "smoke":
        pin_kernels()  # the same digits on every CPU (see PORTABLE_KERNELS)
    os.environ.update(KERNEL_ENV)
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
            stdout_file=Progress(),
            extra_arguments=KERNEL_ARGS,
        )
        print(f"   done in {time.time() - t0:.0f} s", flush=True)
        summary = results / "summaries" / f"{nb.stem}.json"
        if summary.is_file():
            print("\n".join("   " + line for line in key_numbers(summary).splitlines()))
    if not only:
        print(f">> report: {write_report(results)}")
    print(f">> all {len(selected)} notebooks in {time.time() - t_all:.0f} s; outputs in {results}/")
    print(f">> {compare_with_committed(results)}")
    return 0


def compare_with_committed(results: Path) -> str:
    """One line: do the regenerated files equal the committed ones (`git status` of
    `results`)? Untracked outputs (executed notebooks, scratch) are not counted."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", str(results)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"{results} is not in a git checkout: nothing to compare with"
    changed = [line[3:] for line in done.stdout.splitlines()]
    if not changed:
        return "the regenerated results equal the committed ones (git status of results/ clean)"
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"{len(changed)} committed result files changed: {shown} (`git diff -- {results}`)"


# --------------------------------------------------------------------------- REPORT.md


def write_report(results: Path) -> Path:
    """results/REPORT.md: every table and figure the notebooks wrote, one line each, the
    paper's figures and tables first; regenerated by every full `make reproduce`."""
    from aaclip.fileio import atomic_write_text

    summaries = [json.loads(p.read_text()) for p in sorted((results / "summaries").glob("*.json"))]
    profiles = sorted({s["profile"] for s in summaries})
    lines = [
        "# Results",
        "",
        "Written by `make reproduce` (`python -m aaclip.reproduce`) from the notebooks' outputs;",
        f"profile: {', '.join(profiles)}. Every table and figure names where its settings differ",
        "from the paper's. Under `smoke` (a tiny random CLIP on the embedded synthetic set) the",
        "numbers prove the pipeline runs, not the paper's claims.",
        "",
        "## The paper's figures and tables",
        "",
        "| paper | file | what it shows |",
        "| --- | --- | --- |",
    ]
    order = ["Fig. 1 top", "Fig. 1 bottom", "Fig. 2", "zero-shot tables", "Table 3", "Fig. 4",
             "Fig. 5", "all-methods table", "MVFA medical protocol"]  # fmt: skip
    outputs = [(s["notebook"], o) for s in summaries for o in s.get("outputs", [])]
    paper = [x for x in outputs if x[1].get("paper")]
    paper.sort(key=lambda x: order.index(x[1]["paper"]) if x[1]["paper"] in order else 99)
    for _, o in paper:
        lines.append(f"| {o['paper']} | [{o['path']}]({o['path']}) | {o['what']} |")
    montage = results / "figures" / "synthetic_montage.png"
    for s in summaries:
        lines += ["", f"## {s['notebook']}", "", "```", key_numbers_text_of(s), "```", ""]
        for o in s.get("outputs", []):
            lines.append(f"- [{o['path']}]({o['path']}): {o['what']}")
    if montage.is_file():
        lines += ["", "## The embedded dataset", "",
                  "- [figures/synthetic_montage.png](figures/synthetic_montage.png): sample "
                  "images of every synthetic class, ground-truth masks outlined"]  # fmt: skip
    path = results / "REPORT.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def key_numbers_text_of(s: dict) -> str:
    from aaclip.analysis import key_numbers_text

    return key_numbers_text(s["notebook"], s["profile"], s["quick"], s.get("key_numbers", {}))


# --------------------------------------------------------------------------- nbval outputs


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK)


def store_outputs(only: list[str] | None = None) -> int:
    """Execute the committed notebooks as nbval does (AACLIP_QUICK=1, a scratch root) and
    keep only the outputs of their checked cells in the committed files."""
    import nbformat
    from nbclient import NotebookClient

    selected = [nb for nb in notebooks() if not only or any(o in nb.stem for o in only)]
    with tempfile.TemporaryDirectory(prefix="aaclip-nbval-") as scratch:
        env = {"AACLIP_ROOT": scratch, "AACLIP_QUICK": "1", **KERNEL_ENV}
        os.environ.update(env)
        pin_kernels()
        for path in selected:
            t0 = time.time()
            print(f">> {path.name} (smoke, quick)", flush=True)
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(
                nb, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                extra_arguments=KERNEL_ARGS,
            )  # fmt: skip
            client.execute()
            committed = nbformat.read(path, as_version=4)
            for cell, ran in zip(committed.cells, nb.cells, strict=True):
                if cell.cell_type != "code":
                    continue
                checked = is_checked(cell)
                cell.outputs = [clean_output(o) for o in ran.outputs] if checked else []
                # nbval compares only cells that ran in the reference (an execution count)
                cell.execution_count = ran.execution_count if checked else None
                cell.metadata.pop("execution", None)
            nbformat.write(committed, path)
            print(f"   stored in {time.time() - t0:.0f} s", flush=True)
    return 0


def clean_output(output):
    """An output without execution counts or metadata that differ between runs."""
    output = dict(output)
    output.pop("execution_count", None)
    if "metadata" in output:
        output["metadata"] = {}
    import nbformat

    return nbformat.from_dict(output)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--only", nargs="*", help="run only notebooks whose name contains these")
    p.add_argument(
        "--store-outputs",
        action="store_true",
        help="store the checked summary outputs in the committed notebooks (nbval, smoke quick)",
    )
    args = p.parse_args(argv)
    try:
        if args.store_outputs:
            return store_outputs(args.only)
        return run(args.profile, args.data, args.results, args.runs, args.only)
    except Exception as err:  # papermill wraps the failing cell; show its one-line reason
        name = type(err).__name__
        print(f"reproduce: {name}: {str(err).strip().splitlines()[-1] if str(err) else ''}",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
