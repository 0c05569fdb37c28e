"""Development check: our DP-CLIP against reference tensors of the authors' released code.

NOT a test and never run by the test suite. The reference file is produced outside this
repository by a throw-away script that imports (never copies) the authors' code (GitHub
``jeffreyFF/DP-CLIP`` at commit c698119, where ``train.py`` still exists) and runs it on shared
random ``ViT-L-14-336`` weights (open_clip ``create_model(pretrained=None)`` after
``torch.manual_seed(0)``, saved as safetensors) at 224 px, fp32, CPU, with the released
batch-axis GRN and ``relu=False``. The GRN gamma / beta are drawn small and random (at the
released init every GRN is the identity); those adapter weights are saved in the released
``image_adapter_N.pth`` layout, which this script imports through ``load_released``. The
reference holds: frozen-text anchors (MVTec bottle and pill, Brain); on batch A (one anomalous,
one normal image): level features, detection feature, training probabilities, the
segmentation loss per level, test maps per level and summed (industrial and medical blur),
image probabilities and the released ``metrics_eval`` figures; the same images run one at a
time; and three steps of the released ``train_image_adapter`` on batches A, B (two anomalous)
and C (no anomalous pixel): the logged loss and decoupling loss, gradients, prototypes and
adapter weights before and after each step.

    PYTHONPATH=. .venv/bin/python benchmarks/check_dpclip_equivalence.py \\
        [--reference /tmp/released/dpclip_reference.pt] [--threads 2]

Prints one table, ``max|ours - released| / max|released|`` per quantity (tolerance 1e-4, fp32);
``info`` rows are measurements, not pass/fail. Gradients are compared per step with the
adapter weights and prototypes set to the released snapshot before the step (Adam's first
step is about lr * sign(g), so a near-zero gradient can flip a weight by 1e-3 on rounding
noise and chained weights would compare the optimiser, not the method); the chained run is
reported as ``info``. Prototype updates are compared as (after - before): at momentum 0.999
a prototype moves by about 1e-3 of its length per step. Exit status 1 if a checked row fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from aaclip import losses, scoring
from aaclip.backbone import create_backbone
from aaclip.methods.dpclip import DPClip, DPClipConfig, load_released
from aaclip.train import Optimiser, train_step

TOL = 1e-4
ROWS: list[tuple[str, float, float, str, str]] = []


def compare(name: str, ours, ref, note: str = "", check: bool = True) -> float:
    """Record max|a-b| and max|a-b| / max|b| (tensors or lists of tensors)."""
    if isinstance(ours, list | tuple):
        ours = torch.cat([torch.as_tensor(o).flatten() for o in ours])
        ref = torch.cat([torch.as_tensor(r).flatten() for r in ref])
    a, b = torch.as_tensor(ours).double(), torch.as_tensor(ref).double()
    if a.shape != b.shape:
        ROWS.append((name, float("nan"), float("nan"), "FAIL", f"shape {a.shape} vs {b.shape}"))
        return float("inf")
    diff = (a - b).abs().max().item()
    rel = diff / max(b.abs().max().item(), 1e-30)
    ROWS.append((name, diff, rel, ("ok" if rel <= TOL else "FAIL") if check else "info", note))
    return rel


def note_row(name: str, ok: bool, note: str) -> None:
    ROWS.append((name, float("nan"), float("nan"), "ok" if ok else "FAIL", note))


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def build(ref: dict) -> DPClip:
    size = int(ref["img_size"])
    backbone = create_backbone("ViT-L-14-336", weights=ref["backbone_file"], image_size=size)
    compare(
        "positional embedding resized",
        backbone.clip.visual.positional_embedding.detach(),
        ref["positional_embedding_resized"],
        f"336 -> {size} px: open_clip vs the released resize",
    )
    cfg = DPClipConfig(grn_axis="batch", relu=False, class_descriptions="official")
    torch.manual_seed(0)
    model = DPClip(backbone, cfg).eval()
    load_released(model, ref["init_ckpt"])
    state = model.image_adapter.state_dict()
    same = set(state) == set(ref["image_adapter_init"]) and all(
        torch.equal(state[k], v) for k, v in ref["image_adapter_init"].items()
    )
    note_row("import image_adapter.pth", same, f"{len(state)} tensors, released layout")
    return model


@torch.no_grad()
def check_inference(model: DPClip, ref: dict) -> None:
    size = int(ref["img_size"])
    for key, (cls, dataset) in {
        "MVTec/bottle": ("bottle", "MVTec"),
        "MVTec/pill": ("pill", "MVTec"),
        "Brain/Brain": ("Brain", "Brain"),
    }.items():
        compare(
            f"anchors {key}",
            model.class_anchors(cls, dataset),
            ref["anchors"][key],
            "frozen encode_text, prompt ensemble, official descriptions",
        )
    t = ref["anchors"]["MVTec/bottle"]
    images, masks = ref["inputs"]["images"]["A"], ref["inputs"]["masks"]["A"]
    seg, det = model.encode_image(images)
    for i, level in enumerate(model.levels):
        compare(f"patch features level {level}", seg[i], ref["patch_features"][i], "batch of 2")
    compare("detection feature", det, ref["det_feature"], "mean of unit tokens")
    alone = [model.encode_image(images[i : i + 1]) for i in range(2)]
    compare(
        "patch features, images alone",
        [torch.cat([a[0][i] for a in alone]) for i in range(4)],
        ref["patch_features_batch1"],
        "batch 1 each",
    )
    compare(
        "detection feature, images alone",
        torch.cat([a[1] for a in alone]),
        ref["det_feature_batch1"],
    )
    theirs = rel_norm(ref["patch_features"][0], ref["patch_features_batch1"][0])
    ours = rel_norm(seg[0], torch.cat([a[0][0] for a in alone]))
    compare(
        "released GRN: batch of 2 vs alone",
        torch.tensor(ours),
        torch.tensor(theirs),
        f"rel. L2 change of level-1 features: released {theirs:.4f}, ours {ours:.4f}",
        check=False,
    )
    tb = t.unsqueeze(0).expand(2, -1, -1)
    probs = [scoring.training_probs(f, tb, size) for f in seg]
    compare("training probabilities", probs, ref["train_probs"], "softmax after upsampling")
    seg_loss = torch.stack([losses.segmentation_loss(p, masks) for p in probs])
    compare("segmentation loss per level", seg_loss, ref["seg_loss_per_level"])
    compare("classification logits", torch.einsum("be,bec->bc", det, tb), ref["cls_logits"])
    compare("image probability", scoring.image_probability(det, t), ref["image_prob"])
    for domain in ("industrial", "medical"):
        per_level = [scoring.anomaly_map([f], t, size, domain) for f in seg]
        ours = torch.stack(per_level, 1)
        theirs = torch.cat(ref[f"test_maps_{domain}"], 1)
        compare(f"test maps per level ({domain})", ours, theirs, "blur, upsample")
    ctx = model.prepare_class("bottle", "MVTec", "industrial")
    pred = model.predict(images, ctx)
    compare("predict: summed map (industrial)", pred.maps, ref["test_map_sum_industrial"])
    compare("predict: image probability", pred.scores, ref["test_image_prob"])
    labels = ref["inputs"]["labels"]["A"].numpy()
    gt = (masks[:, 0] > 0.5).numpy().ravel()
    medical = scoring.anomaly_map(seg, t, size, "medical")  # bottle anchors, medical blur
    compare("summed map (medical)", medical, ref["test_map_sum_medical"])
    for domain, raw in (("industrial", pred.maps), ("medical", medical)):
        maps, scores = scoring.class_scores(raw, pred.scores, domain)
        released = ref[f"metrics_eval_{domain}"]
        m = maps.numpy().ravel()
        ours = [
            100 * roc_auc_score(gt, m),
            100 * average_precision_score(gt, m),
            100 * roc_auc_score(labels, scores.numpy()),
        ]
        theirs = [released["pixel AUC"], released["pixel AP"], released["image AUC"]]
        ok = np.allclose(np.round(ours, 2), theirs, atol=0.011)
        note_row(
            f"metrics_eval ({domain})",
            ok,
            f"ours {np.round(ours, 2).tolist()} vs released {theirs} (rounded to 0.01)",
        )


def check_training(model: DPClip, ref: dict, reload: bool) -> None:
    """Three steps A, B, C through our train_step; compare losses, gradients, prototypes."""
    steps = ref["train_steps"]
    snaps, inputs = steps["snapshots"], ref["inputs"]
    init = {k: v.clone() for k, v in ref["image_adapter_init"].items()}
    model.image_adapter.load_state_dict(init)
    model.prototypes.load_state_dict(type(model.prototypes)(1, 768).state_dict())
    stage = model.stages()[0]
    opt = Optimiser.for_stage(model, stage)
    grads: list[dict[str, torch.Tensor]] = []
    opt.optimizer.register_step_pre_hook(
        lambda o, a, k: grads.append(
            {n: p.grad.detach().clone() for n, p in model.image_adapter.named_parameters()}
        )
    )
    model.start_stage(stage, ["bottle"], "MVTec")
    model.train()
    tag = "per step" if reload else "chained"
    check = reload
    before, after = [], []
    p = model.prototypes
    for i, name in enumerate(steps["batches"]):
        snap, nxt = snaps[i], snaps[i + 1]
        if reload:
            model.image_adapter.load_state_dict(snap["image_adapter"])
            if snap["va_proto"] is not None:
                p.abnormal[0], p.normal[0] = snap["va_proto"], snap["vn_proto"]
        before.append(torch.stack([p.abnormal[0], p.normal[0]]).clone())
        if snap["va_proto"] is not None:
            compare(
                f"prototypes before {name} ({tag})",
                before[-1],
                torch.stack([snap["va_proto"], snap["vn_proto"]]),
                check=check,
            )
        batch = {
            "image": inputs["images"][name],
            "mask": inputs["masks"][name],
            "label": inputs["labels"][name],
            "class_name": ["bottle", "bottle"],
        }
        terms = train_step(model, stage, batch, opt)
        after.append(torch.stack([p.abnormal[0], p.normal[0]]).clone())
        total, dec = steps["logged"][i]
        compare(
            f"step {name}: total loss ({tag})",
            torch.tensor(terms["loss"]),
            torch.tensor(total),
            check=check,
        )
        ours_dec = terms["decoupling"] / model.cfg.decoupling_weight
        if dec == 0:
            note_row(
                f"step {name}: decoupling loss ({tag})",
                ours_dec == 0,
                f"no anomalous token: ours {ours_dec}, released {dec}",
            )
        else:
            compare(
                f"step {name}: decoupling loss ({tag})",
                torch.tensor(ours_dec),
                torch.tensor(dec),
                "unweighted, as logged",
                check=check,
            )
        keys = sorted(steps["grads"][i])
        compare(
            f"step {name}: gradients, {len(keys)} tensors ({tag})",
            [grads[-1][k] for k in keys],
            [steps["grads"][i][k] for k in keys],
            check=check,
        )
        state = model.image_adapter.state_dict()
        compare(
            f"step {name}: weights after Adam ({tag})",
            [state[k] for k in keys],
            [nxt["image_adapter"][k] for k in keys],
            "Adam's first steps ~ lr*sign(g)",
            check=False,
        )
        compare(
            f"step {name}: lr after",
            torch.tensor(opt.optimizer.param_groups[0]["lr"]),
            torch.tensor(nxt["lr"]),
            "MultiStepLR per iteration",
            check=check,
        )
    compare(
        f"prototypes after A = init + update ({tag})",
        after[0],
        torch.stack([snaps[1]["va_proto"], snaps[1]["vn_proto"]]),
        "set from level 6, moved towards level 24",
        check=check,
    )
    for i, key, note in (
        (1, "proto_update_B", "after B"),
        (2, "proto_update_C_stale", "after C: no anomaly, stale means re-applied"),
    ):
        upd = steps[key]
        compare(
            f"prototype update {note.split(':')[0]} ({tag})",
            after[i] - before[i],
            torch.stack([upd["va"], upd["vn"]]),
            note,
            check=check,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="/tmp/released/dpclip_reference.pt")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not Path(args.reference).is_file():
        sys.exit(f"{args.reference}: no reference file; see this script's docstring")
    t0 = time.time()
    ref = torch.load(args.reference, map_location="cpu", weights_only=False)
    model = build(ref)
    check_inference(model, ref)
    check_training(model, ref, reload=True)
    check_training(model, ref, reload=False)
    width = max(len(r[0]) for r in ROWS)
    print(f"{'quantity':<{width}}  {'max abs diff':>12}  {'rel':>9}  status  note")
    for name, diff, rel, status, note in ROWS:
        print(f"{name:<{width}}  {diff:12.3e}  {rel:9.2e}  {status:<6}  {note}")
    failed = [r for r in ROWS if r[3] == "FAIL"]
    print(f"{len(ROWS)} rows, {len(failed)} failed, tolerance {TOL:g}, {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
