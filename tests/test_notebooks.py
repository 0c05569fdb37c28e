"""Notebooks: each runs top to bottom with papermill under the smoke profile in quick mode and
the numbers it records in `summaries/<notebook>.json` are checked; then nbval runs the
committed notebooks the same way and compares their checked summary cells
(`# NBVAL_CHECK_OUTPUT`) with the outputs stored in them.

The notebooks run in order in one workspace (dataset, results and run folders in a pytest
tmp dir), so later notebooks reuse the run trained by 02, as `make reproduce` does, and nbval
reuses every run the papermill tests trained. The kernel is the "python3" kernelspec of this
interpreter's environment and inherits OMP_NUM_THREADS=1 from os.environ.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from aaclip import reproduce

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
    "07_all_methods",
]
BASE = {
    "profile": "smoke",
    "data_root": "data/synthetic",
    "results_dir": None,
    "runs_dir": "runs",
    "device": None,
    "targets": None,
}
TRAINING = {"shots": None, "epochs": None, "seeds": [111]}
PARAMETERS = {
    "01_anomaly_unawareness": BASE,
    "02_stage1_text_adaptation": BASE | TRAINING,
    "03_stage2_patch_alignment": BASE | TRAINING,
    "04_zero_shot_benchmark": BASE | TRAINING | {"method": "aaclip", "workers": 2},
    "05_ablations": BASE | TRAINING | {"method": "aaclip", "workers": 2},
    "06_metrics_protocol": BASE | TRAINING | {"method": "aaclip"},
    "07_all_methods": BASE | TRAINING | {"methods": None, "workers": 2},
}
CHECK = "# NBVAL_CHECK_OUTPUT"
SMOKE_BANNER = "SMOKE PROFILE — tiny random CLIP on synthetic data"
DATASETS = ["synthetic-industrial", "synthetic-medical"]
# the kernels of `make reproduce` and `make notebooks` (the pinned portable path)
KERNEL_ENV = {**reproduce.KERNEL_ENV, **reproduce.PORTABLE_KERNELS}


def fraction(x) -> bool:
    return isinstance(x, int | float) and 0.0 <= x <= 1.0


# --------------------------------------------------------------------------- committed files


def test_the_notebooks_are_there_in_order():
    assert [p.stem for p in NOTEBOOKS] == STEMS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_parametrised_and_holds_only_checked_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if c.source.startswith(CHECK)]
    assert len(checked) == 1, "one summary cell per notebook is checked by nbval"
    # nbval compares a cell only if the reference ran it: the checked cell keeps its count
    assert checked[0].execution_count == code.index(checked[0]) + 1
    assert all(c.execution_count is None for c in code if c not in checked)
    # the stored output is what nbval compares: the key-number block of a quick smoke run
    text = "".join(o.get("text", "") for o in checked[0].outputs)
    assert text.startswith(f"{path.stem} — key numbers (smoke, quick)"), "run `make notebooks`"
    assert all(not c.outputs for c in code if c not in checked), "only checked cells keep outputs"
    params = code[0]
    assert params.metadata.get("tags") == ["parameters"]
    values: dict = {}
    exec(params.source, {}, values)
    assert values == PARAMETERS[path.stem] | {"quick": False}
    assert f'analysis.setup("{path.stem}"' in code[1].source  # stops here on missing inputs


# --------------------------------------------------------------------------- analysis helpers


def test_no_negative_zero_and_named_percent_columns():
    from aaclip.results import format_number, to_markdown

    assert format_number(-0.0001, 2, 100.0) == "-0.01"
    assert format_number(-0.00001, 2, 100.0) == "0.00" and format_number(-1e-9) == "0.00"
    df = pd.DataFrame({"cos": [0.9], "score_overlap": [0.72], "pixel_auroc": [0.5]})
    assert to_markdown(df, 2, percent=["score_overlap", "pixel_auroc"]).endswith(
        "| 0.90 | 72.00 | 50.00 |"
    )


def test_published_table3_rows_are_read_from_the_note():
    from aaclip.analysis import COMPONENTS, published_components

    pub = published_components()
    assert not pub.empty, "results/published_results.csv lost its Table 3 entries"
    pixel = pub[pub.metric == "pixel_auroc"].set_index("row")["published"]
    assert list(pixel.index.sort_values()) == sorted(COMPONENTS)
    assert pixel["CLIP"] == 50.3 and pixel["+ disentangle loss"] == 92.7
    assert pixel["+ vanilla adapter"] == 48.9


def test_image_adapter_switch_shapes_and_refusal(tiny_clip):
    import torch

    from aaclip.methods.aaclip import AAClip, AAClipConfig

    images = torch.randn(2, 3, 64, 64)
    for mode, n_adapters in (("residual", 1), ("vanilla", 1), ("none", 0)):
        model = AAClip(tiny_clip, AAClipConfig(class_descriptions="plain", image_adapter=mode))
        assert len(model.image_adapter["layer_adapters"]) == n_adapters
        seg, det = model.encode_image(images)
        assert all(torch.isfinite(s).all() for s in seg) and det.shape[0] == 2
    with pytest.raises(ValueError, match="image_adapter"):
        AAClip(tiny_clip, AAClipConfig(image_adapter="linear"))


def test_settings_that_differ_from_the_paper_are_named(synthetic_root):
    from aaclip.analysis import differences_text, profile_config, select_targets

    cfg = profile_config("smoke", synthetic_root, ROOT)
    text = differences_text(cfg)
    assert "backbone.name=aaclip-tiny (paper: ViT-L-14-336)" in text
    assert "data.train_dataset=synthetic (paper: VisA)" in text
    assert "train_records" not in text  # paths are not settings
    paper = profile_config("paper", "data", ROOT)
    assert differences_text(paper) == ""
    only = select_targets(paper, ["BTAD"])
    assert only.data.test_datasets == ("BTAD",) and only.data.test_records[0].endswith(
        "BTAD/test.jsonl"
    )


# --------------------------------------------------------------------------- execution


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, synthetic_root):
    """Dataset, results and runs folders; the kernel environment (single-threaded, Agg)."""
    pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("notebooks")
    (tmp / "data").mkdir()
    (tmp / "data" / "synthetic").symlink_to(synthetic_root, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in KERNEL_ENV.items():
            mp.setenv(key, value)
        mp.setenv("MKL_NUM_THREADS", "1")
        for key in reproduce.UNPINNED:
            mp.delenv(key, raising=False)
        mp.delenv("AACLIP_WEIGHTS", raising=False)
        mp.delenv("AACLIP_QUICK", raising=False)
        mp.delenv("AACLIP_ROOT", raising=False)
        yield {
            "root": tmp,
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
        extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
    )
    return out


def summary(ws: dict, stem: str) -> dict:
    path = ws["results"] / "summaries" / f"{stem}.json"
    return json.loads(path.read_text())


def check_outputs(ws: dict, s: dict) -> None:
    """Common to every notebook: profile recorded, figures and tables exist and say SMOKE,
    every output is described for REPORT.md, key numbers are readable strings."""
    assert s["profile"] == "smoke" and s["quick"] is True
    figures = s.get("figures") or [s["figure"]]
    for f in figures:
        assert (ws["results"] / f).is_file() and f.endswith(".png")
    table = ws["results"] / s["table"]
    assert table.read_text().startswith(f"> {SMOKE_BANNER}")
    assert "Differs from the paper: backbone.name=aaclip-tiny" in table.read_text()
    assert "-0.00" not in table.read_text()
    assert table.with_suffix(".csv").is_file()
    described = {o["path"] for o in s["outputs"]}
    assert set(figures) <= described and s["table"] in described
    assert all(o["what"] for o in s["outputs"])
    assert s["key_numbers"] and all(isinstance(v, str) for v in s["key_numbers"].values())


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
    # Fig. 1 top: 8 test images per class in quick mode; a lower temperature can only push the
    # images on the wrong side further towards the wrong state
    assert s["n_images"] == 6 * 8
    wrong = [s["p_wrong_state"][t].get("wrong-side images") for t in ("1.0", "0.1", "0.01")]
    if wrong[0] is not None:
        assert wrong[0] <= wrong[1] <= wrong[2] and wrong[2] > 0.5
    paper = {o["paper"] for o in s["outputs"]}
    assert "Fig. 1 top" in paper


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
    # Fig. 1 bottom: the same-class normal/abnormal cosine of the frozen encoder is notebook
    # 01's mean; Fig. 2: silhouettes in [-1, 1] for both encoders and both class groups
    frozen, adapted = s["text_similarity_blocks"]
    assert frozen["same_class_pair"] == pytest.approx(sum(first.values()) / 6, abs=1e-5)
    assert frozen["same_class_pair"] != pytest.approx(adapted["same_class_pair"], abs=1e-6)
    for row in s["silhouette"]:
        assert all(-1 <= row[k] <= 1 for k in ("all", "seen (training)", "unseen (test)"))
    assert {"Fig. 1 bottom", "Fig. 2"} <= {o["paper"] for o in s["outputs"]}


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
        assert v == pytest.approx(first[cls], abs=1e-6)


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
    # experiment.run on the final checkpoint agrees with notebook 03's predictions of it
    third = summary(workspace, "03_stage2_patch_alignment")["pixel_auroc_aaclip"]
    industrial = [third[c] for c in ("grass", "coins", "moon")]
    got = s["means"]["AA-CLIP"]["synthetic-industrial"]["pixel_auroc"]
    # summaries hold 6 significant digits: a mean of rounded values is within 1e-6
    assert got == pytest.approx(sum(industrial) / 3, abs=2e-6)
    # Fig. 4 in quick mode: 2-shot and the quick default (8-shot), mean over the two sets
    assert list(s["data_efficiency"]) == ["2", "8"]
    assert all(fraction(v) for d in s["data_efficiency"].values() for v in d.values())
    assert "Fig. 4" in {o["paper"] for o in s["outputs"]}


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
    for name in names:  # trained once each (same config: same folder, e.g. Table 3's row)
        folder = workspace["runs"] / "smoke-quick" / s["run_dirs"][name]
        assert (folder / "train_log.jsonl").is_file()
    assert s["run_dirs"]["no_text_adaptation"] == "component_residual_image_adapter"
    # Table 3: six configured rows beside the published ones; the full model is the default
    table3 = {r["row"]: r for r in s["components"]}
    assert list(table3) == [
        "CLIP",
        "+ linear projector",
        "+ vanilla adapter",
        "+ residual image adapter",
        "+ text adapter",
        "+ disentangle loss",
    ]
    assert table3["+ disentangle loss"]["pixel_auroc"] == rows["default"]["pixel_auroc"]
    assert table3["CLIP"]["published_pixel_auroc"] == pytest.approx(0.503)
    assert all(fraction(r["pixel_auroc"]) for r in table3.values())
    assert "Table 3" in {o["paper"] for o in s["outputs"]}


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


def test_07_all_methods(workspace):
    from aaclip.analysis.methods import published_name
    from aaclip.methods import list_methods

    execute("07_all_methods", workspace)
    s = summary(workspace, "07_all_methods")
    check_outputs(workspace, s)
    # every registered method is either run or skipped with a reason: none is forgotten
    registered = [published_name(m) for m in list_methods()]
    assert sorted(s["methods"] + list(s["skipped"])) == sorted(registered)
    assert {"CLIP", "AA-CLIP"} <= set(s["methods"])
    assert all(s["skipped"].values())
    for m in s["methods"]:
        assert fraction(s["means"][m]["pixel_auroc"]) and fraction(s["means"][m]["image_auroc"])
    # AA-CLIP here is notebook 04's run: the same numbers
    fourth = summary(workspace, "04_zero_shot_benchmark")["means"]["AA-CLIP"]
    expected = sum(fourth[d]["pixel_auroc"] for d in DATASETS) / 2
    assert s["means"]["AA-CLIP"]["pixel_auroc"] == pytest.approx(expected, abs=2e-6)
    assert s["beside_published_rows"] == 14 * len(s["methods"]) and s["published_matched"] == 0
    selection = pd.read_csv(
        workspace["results"] / "tables" / "07_all_methods_checkpoint_selection.csv"
    )
    assert list(selection.method) == registered
    assert all("test set" in r for r in selection.release[selection.method != "CLIP"])
    assert {"Fig. 5", "all-methods table"} <= {o["paper"] for o in s["outputs"]}
    # the MVFA medical protocol runs through aaclip.medical for the methods declaring it
    from aaclip.analysis.methods import mvfa_methods, mvfa_protocol

    assert s["mvfa_protocol"] == (mvfa_protocol() is not None and bool(mvfa_methods()))


def test_report_links_every_paper_figure_and_table(workspace):
    """results/REPORT.md (written by `make reproduce`): the paper's figures and tables first,
    then every output of every notebook, one line each; every link resolves."""
    import re

    from aaclip.reproduce import write_report

    report = write_report(workspace["results"]).read_text()
    paper = report.split("## 01_anomaly_unawareness")[0]
    for item in ("Fig. 1 top", "Fig. 1 bottom", "Fig. 2", "Table 3", "Fig. 4", "Fig. 5",
                 "all-methods table"):  # fmt: skip
        assert f"| {item} |" in paper, item
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) > 30
    missing = [link for link in links if not (workspace["results"] / link).is_file()]
    assert not missing, missing
    for stem in STEMS:
        assert f"## {stem}" in report and f"{stem} — key numbers (smoke, quick)" in report


def test_nbval_on_the_committed_notebooks(workspace):
    """nbval runs the committed notebooks as they are (AACLIP_QUICK=1, the workspace as the
    root, reusing the runs trained above) and compares each checked summary cell with the
    output stored in the file: the stored key numbers are what a quick smoke run prints."""
    pytest.importorskip("nbval")
    env = reproduce.pin_kernels(dict(os.environ))
    env.update(KERNEL_ENV)
    env.update({"AACLIP_ROOT": str(workspace["root"]), "AACLIP_QUICK": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
        "--nbval-sanitize-with", str(ROOT / "notebooks" / "nbval_sanitize.cfg"),
        "--nbval-kernel-name", "python3", "--nbval-cell-timeout", "900",
        *map(str, NOTEBOOKS),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


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
