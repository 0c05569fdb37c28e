"""torchrun: DDP training equals single-process training with the same global batch, and
sharded evaluation gives the single-process metrics (two gloo processes on the CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from aaclip import checkpoints as ck
from aaclip import data, distributed, runs
from aaclip import train as tr
from aaclip.config import apply_overrides, preset
from aaclip.evaluate import evaluate
from aaclip.methods import AAClip, Method

REPO = Path(__file__).resolve().parent.parent


def no_augment(self: Method):  # the hook tests/ddp_worker.py installs in each rank
    return [dataclasses.replace(s, augment="none") for s in self.schedule(self.cfg)]


def ddp_config(root: Path):
    """13 training images: uneven last batches (stage 1: 8 + 5 -> 3|2; stage 2: 4,4,4,1 -> the
    second rank's last part is empty). Losses are per-image means: vv attention over tokens,
    no disentangle term (see aaclip.distributed); stage-2 lr below Adam's rounding blow-up."""
    records = data.load_records(root / "train.jsonl")
    picked = [r for r in records if r.label == 1][:7] + [r for r in records if r.label == 0][:6]
    data.write_records(root / "ddp_train13.jsonl", picked)
    tests = []
    for name in ("industrial_test", "medical_test"):
        records = data.load_records(root / f"{name}.jsonl")
        small = []
        for c in data.class_names(records):
            of = [r for r in records if r.class_name == c]
            small += [r for r in of if r.label == 0][:3] + [r for r in of if r.label == 1][:3]
        data.write_records(root / f"ddp_{name}.jsonl", small)
        tests.append(str(root / f"ddp_{name}.jsonl"))
    return apply_overrides(
        preset("smoke", data_root=str(root)),
        [
            f"data.train_records={root / 'ddp_train13.jsonl'}",
            f"data.test_records={json.dumps(tests)}",
            "backbone.image_size=64",
            "model.stage1_epochs=1",
            "model.stage2_epochs=2",
            "model.stage1_batch_size=8",
            "model.stage2_batch_size=4",
            "model.stage2_lr=1e-4",
            "model.vv_attention_axis=tokens",
            "model.text_norm_weight=0",
            "eval.batch_size=4",  # 6 images per class: batches 4 + 2 on different ranks
        ],
    )


def test_shards_cover_the_single_process_batches_once():
    seed, n, batch = 7, 13, 4
    single = [b.tolist() for b in tr._loader(list(range(n)), batch, 0, seed)]
    assert [b.tolist() for b in tr._loader(range(n), batch, 0, seed)] == single
    for b in single:
        parts = [distributed.shard(b, r, 2) for r in range(2)]
        assert sum((p for p, k in parts if k), []) == b
        assert sum(k for _, k in parts) == len(b)
    assert distributed.shard([5], 1, 2) == ([5], 0)  # an empty part: one image, weight 0


def test_refusals_are_one_line(synthetic_root, tmp_path):
    stage = AAClip.schedule(AAClip.Config())[1]
    with pytest.raises(ValueError, match=r"batch size 2 does not divide over 3 processes"):
        distributed.per_rank_batch(stage, 3)

    class Momentum(AAClip):
        def after_step(self, stage):
            pass

    class Mixing(AAClip):
        batch_independent = False

    cfg = preset("smoke", data_root=str(synthetic_root))
    from aaclip.backbone import build_backbone

    backbone = build_backbone(apply_overrides(cfg, ["backbone.image_size=64"]).backbone, "cpu")
    for kind, match in ((Momentum, "after_step"), (Mixing, "batch_independent=False")):
        method = kind(backbone, cfg.model)
        distributed.check_method(method, 1)  # one process: nothing to refuse
        with pytest.raises(ValueError, match=match) as err:
            distributed.check_method(method, 2)
        assert "\n" not in str(err.value)


def test_torchrun_training_and_sharded_evaluation_equal_single_process(
    synthetic_root, tmp_path, monkeypatch
):
    cfg = ddp_config(synthetic_root)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    ddp_run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "ddp_worker.py"), "--",
        "train", "--config", str(cfg_file), "--run", str(ddp_run), "--device", "cpu", "+",
        "test", "--run", str(ddp_run), "--device", "cpu",
    ]  # fmt: skip
    launched = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    monkeypatch.setattr(Method, "stages", no_augment)  # the same hook, in this process
    single = tr.train(cfg, tmp_path / "single", device="cpu", progress=False)
    out, _ = launched.communicate(timeout=300)
    assert launched.returncode == 0, out.decode()[-3000:]

    # training: the same checkpoints, weights within 1e-6, the same global-batch losses
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == sorted(
        p.name for p in single.checkpoints
    )
    worst = 0.0
    for path in single.checkpoints:
        a, _ = ck.load_adapters(path)
        b, _ = ck.load_adapters(ddp_run / "checkpoints" / path.name)
        worst = max(worst, *((a[k] - b[k]).abs().max().item() for k in a))
    assert worst <= 1e-6, worst
    for x, y in zip(runs.read_log(single.run_dir), runs.read_log(ddp_run), strict=True):
        assert (x["stage"], x["epoch"]) == (y["stage"], y["epoch"])
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)
    assert not list(ddp_run.rglob("*.tmp"))

    # evaluation: the DDP run's tables equal a single-process pass over its checkpoint
    final = runs.final_checkpoint(ddp_run, cfg)
    table = evaluate(cfg, [final], tmp_path / "single_eval", device="cpu", progress=False)
    for dataset in cfg.data.test_datasets:
        sharded = pd.read_csv(ddp_run / "eval" / final.stem / dataset / "metrics.csv")
        alone = pd.read_csv(tmp_path / "single_eval" / final.stem / dataset / "metrics.csv")
        pd.testing.assert_frame_equal(sharded, alone, check_exact=True)
        record = json.loads((ddp_run / "eval" / final.stem / dataset / "run.json").read_text())
        assert record["processes"] == 2
    assert table["pixel_aupro"].notna().any()
    print(f"DDP vs single: max |w| difference {worst:.2e}")  # shown with -s


def test_batches_of_an_evaluation_pass_go_round_robin_as_one_process_cuts_them():
    shards = [distributed.Shards(distributed.Context(r, 2)) for r in range(2)]
    seen = [[s.batches(n, 4) for s in shards] for n in (6, 9)]
    assert seen[0] == [[[0, 1, 2, 3]], [[4, 5]]]  # class 1: batches 0 and 1
    assert seen[1] == [[[0, 1, 2, 3], [8]], [[4, 5, 6, 7]]]  # class 2: pass batches 2, 3, 4
    one = distributed.Shards()
    assert one.batches(6, 4) == [[0, 1, 2, 3], [4, 5]]
    assert [len(b) for b in DataLoader(range(6), batch_sampler=one.batches(6, 4))] == [4, 2]
    assert torch.equal(next(iter(DataLoader(range(6), batch_size=4))), torch.arange(4))
