"""Notebooks: each runs top to bottom with papermill under the smoke profile in quick mode,
and the numbers it records in `summaries/<notebook>.json` are checked.

The notebooks run in order in one workspace (dataset, results and run folders in a pytest
tmp dir), so later notebooks reuse the run trained by 02, as `make reproduce` does; each
notebook would also train it on its own. The kernel is the "python3" kernelspec of this
interpreter's environment and inherits OMP_NUM_THREADS=1 from os.environ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
STEMS = [
    "01_anomaly_unawareness",
    "02_stage1_text_adaptation",
    "03_stage2_patch_alignment",
    "04_zero_shot_benchmark",
    "05_ablations",
    "06_metrics_protocol",
]
PARAMETERS = {
    "profile": "smoke",
    "data_root": "data/synthetic",
    "results_dir": "results",
    "runs_dir": "runs",
    "device": None,
    "quick": False,
}
SMOKE_BANNER = "SMOKE PROFILE — tiny random CLIP on synthetic data"
DATASETS = ["synthetic-industrial", "synthetic-medical"]


def fraction(x) -> bool:
    return isinstance(x, int | float) and 0.0 <= x <= 1.0


# --------------------------------------------------------------------------- committed files


def test_the_six_notebooks_are_there_in_order():
    assert [p.stem for p in NOTEBOOKS] == STEMS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean_and_parametrised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    params = code[0]
    assert params.metadata.get("tags") == ["parameters"]
    values: dict = {}
    exec(params.source, {}, values)
    assert values == PARAMETERS
    assert f'analysis.setup("{path.stem}"' in code[1].source  # stops here on missing inputs


# --------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, synthetic_root):
    """Dataset, results and runs folders; the kernel environment (single-threaded, Agg)."""
    pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("notebooks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        mp.setenv("MPLBACKEND", "Agg")
        mp.delenv("AACLIP_WEIGHTS", raising=False)
        yield {
            "data_root": synthetic_root,
            "results": tmp / "results",
            "runs": tmp / "runs",
            "executed": tmp / "executed",
        }


def execute(stem: str, ws: dict, **parameters) -> Path:
    import papermill as pm

    out = ws["executed"] / f"{stem}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {
        "profile": "smoke",
        "data_root": str(ws["data_root"]),
        "results_dir": str(ws["results"]),
        "runs_dir": str(ws["runs"]),
        "quick": True,
    }
    params.update(parameters)
    pm.execute_notebook(
        str(ROOT / "notebooks" / f"{stem}.ipynb"),
        str(out),
        parameters=params,
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
        log_output=False,
    )
    return out


def summary(ws: dict, stem: str) -> dict:
    path = ws["results"] / "summaries" / f"{stem}.json"
    return json.loads(path.read_text())


def check_outputs(ws: dict, s: dict) -> None:
    """Common to every notebook: profile recorded, figures and tables exist and say SMOKE."""
    assert s["profile"] == "smoke" and s["quick"] is True
    figures = s.get("figures") or [s["figure"]]
    for f in figures:
        assert (ws["results"] / f).is_file() and f.endswith(".png")
    table = ws["results"] / s["table"]
    assert table.read_text().startswith(f"> {SMOKE_BANNER}")
    assert table.with_suffix(".csv").is_file()


@pytest.fixture(scope="module")
def held_out(synthetic_root) -> list[str]:
    return json.loads((synthetic_root / "dataset.json").read_text())["splits"]["test"]


def test_01_anomaly_unawareness(workspace, held_out):
    execute("01_anomaly_unawareness", workspace)
    s = summary(workspace, "01_anomaly_unawareness")
    check_outputs(workspace, s)
    assert s["n_classes"] == 6 and sorted(s["classes"]) == sorted(held_out)
    # random tiny CLIP: the two anchors of every class are still close (deterministic)
    assert all(0.75 < c <= 1.0 for c in s["anchor_cos"].values()), s["anchor_cos"]
    assert s["anchor_cos_mean"] > 0.85
    assert all(fraction(v) for v in s["pixel_auroc"].values())
    assert fraction(s["score_overlap_mean"]) and s["score_overlap_mean"] > 0.3
    assert fraction(s["score_auroc_sampled_mean"]) and fraction(s["image_auroc_mean"])


def test_02_stage1_text_adaptation(workspace, held_out):
    execute("02_stage1_text_adaptation", workspace)
    s = summary(workspace, "02_stage1_text_adaptation")
    check_outputs(workspace, s)
    assert s["stage1_epochs"] == 2 and len(s["stage1_loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in s["stage1_loss"])
    assert s["n_train_classes"] == 5 and s["n_test_classes"] == 6
    assert s["stage1_checkpoint"] == "stage1_epoch002.safetensors"
    # the frozen anchors are notebook 01's: the same CLIP text encoder, prompts and classes
    first = summary(workspace, "01_anomaly_unawareness")["anchor_cos"]
    for cls in held_out:
        assert s["cos_frozen"][cls] == pytest.approx(first[cls], abs=1e-6)
    train_cos = [v for k, v in s["cos_frozen"].items() if k not in held_out]
    assert s["disentangle_frozen_train"] == pytest.approx((sum(train_cos) / 5) ** 2, rel=1e-5)
    for key in ("frozen", "init", "stage1"):
        assert fraction(s[f"disentangle_{key}_train"])
        assert all(-1.0 <= v <= 1.0 for v in s[f"cos_{key}"].values())
    # stage 1 trained the text adapters: the anchors moved away from their initial values
    assert any(abs(s["cos_stage1"][c] - s["cos_init"][c]) > 1e-4 for c in s["cos_init"])


def test_03_stage2_patch_alignment(workspace, held_out):
    execute("03_stage2_patch_alignment", workspace)
    s = summary(workspace, "03_stage2_patch_alignment")
    check_outputs(workspace, s)
    assert len(s["figures"]) == 2
    assert s["stage2_epochs"] == 2 and len(s["stage2_loss"]) == 2
    assert all(math.isfinite(v) for v in s["stage2_loss"])
    assert s["checkpoint"] == "stage2_epoch002.safetensors"
    assert sorted(s["classes_shown"]) == sorted(held_out) and s["n_examples"] == 12
    assert all(fraction(v) for v in s["pixel_auroc_aaclip"].values())
    # the baseline maps here share AA-CLIP's frozen backbone: same numbers as notebook 01
    first = summary(workspace, "01_anomaly_unawareness")["pixel_auroc"]
    for cls, v in s["pixel_auroc_clip"].items():
        assert v == pytest.approx(first[cls], abs=1e-9)


def test_04_zero_shot_benchmark(workspace):
    execute("04_zero_shot_benchmark", workspace)
    s = summary(workspace, "04_zero_shot_benchmark")
    check_outputs(workspace, s)
    assert s["datasets"] == DATASETS
    assert s["n_classes"] == {d: 3 for d in DATASETS}
    assert set(s["means"]) == {"AA-CLIP", "CLIP"}
    for per_dataset in s["means"].values():
        assert sorted(per_dataset) == DATASETS
        assert all(fraction(v) for m in per_dataset.values() for v in m.values())
    # smoke targets have no published counterpart; the join still ran (7 metrics x 2 sets)
    assert s["published_matched"] == 0 and s["beside_published_rows"] == 14
    # evaluate() on the final checkpoint agrees with notebook 03's predictions of it
    third = summary(workspace, "03_stage2_patch_alignment")["pixel_auroc_aaclip"]
    industrial = [third[c] for c in ("grass", "coins", "moon")]
    got = s["means"]["AA-CLIP"]["synthetic-industrial"]["pixel_auroc"]
    assert got == pytest.approx(sum(industrial) / 3, abs=1e-9)


def test_05_ablations(workspace):
    execute("05_ablations", workspace)
    s = summary(workspace, "05_ablations")
    check_outputs(workspace, s)
    names = [
        "default",
        "stage1_levels_all",
        "vv_attention_tokens",
        "class_descriptions_official",
        "stage1_cls_loss",
        "quick_gelu",
        "no_text_adaptation",
    ]
    assert s["variants"] == names and s["n_variants"] == len(names)
    assert [r["variant"] for r in s["rows"]] == names
    assert s["epochs"] == {"stage1": 1, "stage2": 1}
    rows = {r["variant"]: r for r in s["rows"]}
    for r in s["rows"]:
        assert fraction(r["image_auroc"]) and fraction(r["pixel_auroc"])
    assert rows["default"]["pixel_auroc_diff"] == 0 and rows["default"]["image_auroc_diff"] == 0
    # smoke: no official descriptions for synthetic classes -> folder names -> same model
    assert s["description_fallback"] and s["warnings"]["class_descriptions_official"] == 11
    official = rows["class_descriptions_official"]
    assert official["pixel_auroc_diff"] == 0 and official["image_auroc_diff"] == 0
    # without stage 1 the anchors are CLIP's: a different model
    assert rows["no_text_adaptation"]["pixel_auroc_diff"] != 0
    for name in names:
        folder = "ablation_" + name
        assert (workspace["runs"] / "smoke-quick" / folder / "train_log.jsonl").is_file()


def test_06_metrics_protocol(workspace):
    execute("06_metrics_protocol", workspace)
    s = summary(workspace, "06_metrics_protocol")
    check_outputs(workspace, s)
    adv = s["adversarial"]
    assert adv["pixel_aupro"] == pytest.approx(0.580196, abs=1e-5)
    assert adv["pixel_aupro"] - adv["pixel_aupro_wrong_last_fpr"] > 0.05
    assert adv["pixel_aupro"] - adv["pixel_aupro_wrong_200_thresholds"] > 0.05
    assert s["n_classes"] == 6
    for key in ("aupro_exact", "aupro_wrong_last_fpr", "aupro_wrong_200_thresholds"):
        assert all(fraction(v) for v in s[key].values())
    assert s["max_abs_difference_on_model_maps"] < 0.1
    single = s["single_label"]
    assert single["image_auroc"] is None and single["image_ap"] is None  # missing, not 0
    assert fraction(single["pixel_auroc"])
    assert single["markdown_row"].count("–") == 3
    assert any("image metrics are undefined" in w for w in single["warnings"])


def test_paper_profile_stops_at_the_setup_cell_with_one_message(workspace, tmp_path):
    """No datasets, no weights: the first cell after the parameters stops, naming them."""
    from papermill.exceptions import PapermillExecutionError

    ws = dict(workspace, results=tmp_path / "results", executed=tmp_path / "executed")
    with pytest.raises(PapermillExecutionError) as err:
        execute("01_anomaly_unawareness", ws, profile="paper", quick=False)
    assert err.value.ename == "MissingInputsError"
    message = err.value.evalue
    assert "AACLIP_WEIGHTS" in message and "backbone.weights" in message
    assert "VisA/test.jsonl" in message and "Colon_cvc300/test.jsonl" in message
    nb = nbformat.read(ws["executed"] / "01_anomaly_unawareness.ipynb", as_version=4)
    failed = [c for c in nb.cells if c.cell_type == "code" and c.get("outputs")]
    errors = [o for c in failed for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1
    assert not (tmp_path / "results").exists()  # nothing was produced
