"""Text–image alignment (notebooks 01–03): anchors and their cosines, raw patch scores of
normal vs anomalous pixels, image-to-text similarity and the temperature (Fig. 1 top), the
normal/abnormal text-similarity matrix before/after text adaptation (Fig. 1 bottom), t-SNE
of the prompt features (Fig. 2), and predictions of several models on the test sets."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from aaclip import data, losses, metrics, prompts, scoring, text
from aaclip.config import ExperimentConfig
from aaclip.evaluate import EvalSet, eval_sets
from aaclip.runtime import full_precision


@torch.no_grad()
def anchor_cosines(
    model: torch.nn.Module, class_names: Iterable[str], dataset: str | None, adapted: bool
) -> dict[str, float]:
    """cos(t_normal, t_abnormal) per class: the anchors are unit vectors, so a dot product."""
    anchors = _anchors(model, list(class_names), dataset, adapted)
    return {name: float(a[:, 0] @ a[:, 1]) for name, a in anchors.items()}


def _anchors(
    model: torch.nn.Module, names: list[str], dataset: str | None, adapted: bool
) -> dict[str, torch.Tensor]:
    """Anchors per class: AA-CLIP's adapted or frozen text, else the method's own anchors."""
    if hasattr(model, "anchors_for"):  # AA-CLIP: either text encoder on request
        return model.anchors_for(names, dataset, adapted=adapted)
    return {n: model.class_anchors(n, dataset) for n in dict.fromkeys(names)}


def patch_scores(
    model: torch.nn.Module, images: torch.Tensor, anchors: torch.Tensor
) -> torch.Tensor:
    """f·(t_a − t_n) of the last level's patch features on the patch grid: (B, g, g)."""
    seg, _ = model.encode_image(images)
    logits = scoring.patch_logits(full_precision(seg[-1]), full_precision(anchors))
    return (logits[:, 1] - logits[:, 0]) / scoring.LOGIT_SCALE


@torch.no_grad()
def patch_score_samples(
    model: torch.nn.Module,
    cfg: ExperimentConfig,
    device: torch.device,
    per_image: int = 64,
    seed: int = 0,
    adapted: bool = False,
) -> pd.DataFrame:
    """Raw patch scores f·(t_a − t_n) at pixels of every test image, normal vs anomalous.

    Scores are computed on the patch grid and upsampled bilinearly to the evaluation size
    (no blur, no per-class normalisation: the raw text-image alignment). From each image up
    to `per_image` normal pixels and `per_image` anomalous pixels are drawn (seeded).
    Returns columns dataset, class_name, pixel ('normal' | 'anomalous'), score.
    """
    gen = torch.Generator().manual_seed(seed)
    size = cfg.backbone.image_size
    frames = []
    for ts in eval_sets(cfg):
        records = ts.records()
        for cls in data.class_names(records):
            subset = [r for r in records if r.class_name == cls]
            anchors = full_precision(_anchors(model, [cls], ts.dataset, adapted)[cls])
            loader = torch.utils.data.DataLoader(
                data.RecordDataset(subset, ts.root, size, dtype=model.dtype),
                batch_size=cfg.eval.batch_size,
            )
            picked: dict[str, list[torch.Tensor]] = {"normal": [], "anomalous": []}
            for batch in loader:
                s = patch_scores(model, batch["image"].to(device), anchors)
                s = scoring.upsample(s.unsqueeze(1), size)[:, 0].cpu()
                masks = batch["mask"][:, 0] > 0.5
                for img_scores, mask in zip(s, masks, strict=True):
                    for label, where in (("normal", ~mask), ("anomalous", mask)):
                        values = img_scores[where]
                        if len(values) > per_image:
                            idx = torch.randperm(len(values), generator=gen)[:per_image]
                            values = values[idx]
                        picked[label].append(values)
            for label, parts in picked.items():
                values = torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)
                frames.append(
                    pd.DataFrame(
                        {"dataset": ts.dataset, "class_name": cls, "pixel": label, "score": values}
                    )
                )
    return pd.concat(frames, ignore_index=True)


def overlap_coefficient(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """Shared area of the two normalised histograms (1 = identical, 0 = disjoint)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    if hi <= lo:
        return 1.0
    edges = np.linspace(lo, hi, bins + 1)
    pa = np.histogram(a, edges)[0] / len(a)
    pb = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(pa, pb).sum())


def score_separation(samples: pd.DataFrame) -> pd.DataFrame:
    """Per class: mean raw score of normal / anomalous pixels, their AUROC and overlap."""
    rows = []
    for (dataset, cls), g in samples.groupby(["dataset", "class_name"], sort=False):
        normal = g.loc[g.pixel == "normal", "score"].to_numpy()
        anomalous = g.loc[g.pixel == "anomalous", "score"].to_numpy()
        labels = np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]
        rows.append(
            {
                "dataset": dataset,
                "class_name": cls,
                "score_normal_mean": float(normal.mean()) if len(normal) else float("nan"),
                "score_anomalous_mean": float(anomalous.mean()) if len(anomalous) else math.nan,
                "score_auroc_sampled": metrics.auroc(np.r_[normal, anomalous], labels),
                "score_overlap": overlap_coefficient(normal, anomalous),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def anchor_comparison(
    encoders: dict[str, tuple[torch.nn.Module, bool]],
    groups: Sequence[tuple[str, str | None, list[str]]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """cos(t_n, t_a) per class for several text encoders, and the disentangle term.

    `encoders` maps a short name to (model, adapted), e.g. {"frozen": (m, False),
    "stage1": (m, True)}. Returns a per-class table (split, dataset, class_name,
    cos_<name>...) and, per split, the disentangle term (mean_c <t_n, t_a>)² of each
    encoder, computed with the training loss `losses.disentangle_loss` over the split.
    """
    rows, terms = [], []
    for split, dataset, names in groups:
        term: dict[str, Any] = {"split": split, "n_classes": len(names)}
        cos: dict[str, dict[str, float]] = {}
        for key, (model, adapted) in encoders.items():
            anchors = _anchors(model, names, dataset, adapted)
            stacked = torch.stack([full_precision(anchors[n]) for n in names])
            term[f"disentangle_{key}"] = float(losses.disentangle_loss(stacked))
            cos[key] = {n: float(a[:, 0] @ a[:, 1]) for n, a in anchors.items()}
        terms.append(term)
        rows += [
            {"split": split, "dataset": dataset, "class_name": n}
            | {f"cos_{key}": cos[key][n] for key in encoders}
            for n in names
        ]
    return pd.DataFrame(rows), pd.DataFrame(terms)


def initial_model(cfg: ExperimentConfig, device: torch.device) -> torch.nn.Module:
    """AA-CLIP with its adapters as `train` initialises them (seeded with train.seed)."""
    from aaclip.methods import create_method

    model = create_method(cfg, device)
    model.text_adapted = True  # its (untrained) text adapters are what stage 1 starts from
    return model


def predict_test_sets(
    cfg: ExperimentConfig,
    models: dict[str, torch.nn.Module],
    device: torch.device,
    progress: bool = False,
) -> dict[EvalSet, dict[str, dict[str, Any]]]:
    """`evaluate.predict` on every test set: {test set: {model: {class: ClassPredictions}}}."""
    from aaclip.evaluate import predict

    return {
        ts: predict(
            models,
            ts.records(),
            ts.root,
            dataset=ts.dataset,
            domain=ts.domain,
            batch_size=cfg.eval.batch_size,
            device=device,
            progress=progress,
        )
        for ts in eval_sets(cfg)
    }


def pick_examples(pred: Any, n_anomalous: int = 1, n_normal: int = 1) -> list[int]:
    """Indices of the anomalous images with the largest defects, then the first normal ones."""
    labels = np.asarray(pred.labels)
    area = pred.masks.flatten(1).sum(1).numpy()
    anomalous = [i for i in np.argsort(-area, kind="stable") if labels[i] == 1][:n_anomalous]
    normal = [i for i in range(len(labels)) if labels[i] == 0][:n_normal]
    return [int(i) for i in anomalous + normal]


# --------------------------------------------------------------------------- Fig. 1 top


@torch.no_grad()
def image_text_similarity(
    model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device
) -> pd.DataFrame:
    """cos(v, t_n) and cos(v, t_a) of every test image's global CLIP embedding v against its
    class's frozen anchors. Columns: dataset, class_name, label, sim_normal, sim_abnormal."""
    size = cfg.backbone.image_size
    frames = []
    for ts in eval_sets(cfg):
        records = ts.records()
        for cls in data.class_names(records):
            subset = [r for r in records if r.class_name == cls]
            anchors = full_precision(_anchors(model, [cls], ts.dataset, adapted=False)[cls])
            loader = torch.utils.data.DataLoader(
                data.RecordDataset(subset, ts.root, size, dtype=model.dtype),
                batch_size=cfg.eval.batch_size,
            )
            for batch in loader:
                _, image = model.encode_image(batch["image"].to(device))
                sims = F.normalize(full_precision(image), dim=-1) @ anchors
                frames.append(
                    pd.DataFrame(
                        {
                            "dataset": ts.dataset,
                            "class_name": cls,
                            "label": batch["label"].numpy(),
                            "sim_normal": sims[:, 0].cpu().numpy(),
                            "sim_abnormal": sims[:, 1].cpu().numpy(),
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


TEMPERATURES = (1.0, 0.1, 0.03, 0.01)  # 0.01: CLIP's logit scale 100


def temperature_errors(
    sims: pd.DataFrame, temperatures: Sequence[float] = TEMPERATURES
) -> pd.DataFrame:
    """How a lower softmax temperature turns a small similarity error into a confident one.

    p(abnormal) = softmax((cos_n, cos_a) / tau)[1]. Per temperature and image group
    (normal, anomalous, all, and the images on the wrong side: cos_a > cos_n for a normal
    image, or the reverse; independent of tau): the share on the wrong side, the mean
    probability given to the wrong state and the mean cross-entropy -log p(true state).
    """
    margin = (sims.sim_abnormal - sims.sim_normal).to_numpy()
    label = sims.label.to_numpy()
    sign = np.where(label == 1, 1.0, -1.0)  # margin in favour of the true state
    rows = []
    for tau in temperatures:
        z = sign * margin / tau
        p_true = 1.0 / (1.0 + np.exp(-z))
        ce = np.logaddexp(0.0, -z)  # -log sigmoid(z), stable
        for group, keep in (
            ("normal images", label == 0),
            ("anomalous images", label == 1),
            ("all images", np.ones_like(label, bool)),
            ("wrong-side images", sign * margin < 0),
        ):
            if not keep.any():
                continue
            rows.append(
                {
                    "temperature": tau,
                    "images": group,
                    "n_images": int(keep.sum()),
                    "wrong_side": float((z[keep] < 0).mean()),
                    "p_wrong_state": float((1 - p_true[keep]).mean()),
                    "cross_entropy": float(ce[keep].mean()),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Fig. 1 bottom


@torch.no_grad()
def text_similarity_matrix(
    model: torch.nn.Module, classes: Sequence[tuple[str | None, str]], adapted: bool
) -> pd.DataFrame:
    """cos between the anchors of `classes` ((dataset, class name) pairs): rows and columns
    are every class's normal anchor, then every class's abnormal anchor ('class · N' /
    'class · A')."""
    anchors: dict[str, torch.Tensor] = {}
    for dataset in dict.fromkeys(d for d, _ in classes):
        names = [n for d, n in classes if d == dataset]
        anchors.update(_anchors(model, names, dataset, adapted))
    names = [n for _, n in classes]
    vectors = [anchors[n][:, 0] for n in names] + [anchors[n][:, 1] for n in names]
    labels = [f"{n} · N" for n in names] + [f"{n} · A" for n in names]
    m = full_precision(torch.stack(vectors))
    return pd.DataFrame((m @ m.T).cpu().numpy(), index=labels, columns=labels)


def normal_abnormal_block(matrix: pd.DataFrame) -> dict[str, float]:
    """Mean cos of the normal-normal, abnormal-abnormal and normal-abnormal blocks, and of
    the same class's pair (the diagonal of the normal-abnormal block)."""
    k = len(matrix) // 2
    m = matrix.to_numpy()
    nn_, aa, na = m[:k, :k], m[k:, k:], m[:k, k:]
    off = ~np.eye(k, dtype=bool)
    return {
        "normal_normal": float(nn_[off].mean()) if k > 1 else float("nan"),
        "abnormal_abnormal": float(aa[off].mean()) if k > 1 else float("nan"),
        "normal_abnormal": float(na.mean()),
        "same_class_pair": float(np.diag(na).mean()),
    }


# --------------------------------------------------------------------------- Fig. 2


@torch.no_grad()
def prompt_features(
    model: torch.nn.Module,
    groups: Iterable[tuple[str, str | None, list[str]]],
    adapted: bool,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Text features of every prompt sentence (each state x template) of every class.

    `groups` as `class_groups` returns them: the training split is 'seen', the rest
    'unseen'. Returns (rows: seen, class_name, state, sentence) and the L2-normalised
    features (N, E) from the frozen (`adapted=False`) or the adapted text encoder.
    """
    tokenizer = model.backbone.tokenizer
    mode = model.cfg.class_descriptions
    rows, feats = [], []
    for split, dataset, names in groups:
        seen = "seen (training)" if split == "train" else "unseen (test)"
        for name in names:
            desc = text.class_text(name, dataset, mode, None)
            for state, sentences in zip(
                ("normal", "abnormal"), prompts.prompt_sentences(desc), strict=True
            ):
                f = model.encode_text(tokenizer(sentences).to(model.device), adapted)
                feats.append(F.normalize(full_precision(f), dim=-1).cpu())
                rows += [
                    {"classes": seen, "class_name": name, "state": state, "sentence": s}
                    for s in sentences
                ]
    return pd.DataFrame(rows), torch.cat(feats).numpy()


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of the features (sklearn, PCA init, seeded; perplexity <= (n - 1) / 3)."""
    from sklearn.manifold import TSNE

    n = len(features)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features.astype(np.float64))


def state_separation(rows: pd.DataFrame, features: np.ndarray) -> dict[str, float]:
    """Silhouette (cosine) of the normal vs abnormal prompt features, per class group and
    overall: 1 = the two states form separate clusters, 0 = mixed. Computed on the features
    themselves, not on the t-SNE plane (which only illustrates it)."""
    from sklearn.metrics import silhouette_score

    out = {}
    for group, keep in [("all", np.ones(len(rows), bool))] + [
        (g, (rows.classes == g).to_numpy()) for g in rows.classes.unique()
    ]:
        states = rows.state[keep].to_numpy()
        if len(set(states)) < 2:
            out[group] = float("nan")
            continue
        out[group] = float(silhouette_score(features[keep], states, metric="cosine"))
    return out
