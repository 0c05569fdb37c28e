"""Development check (never run by tests): our MADFF gates against the authors' module.

Reads a reference file made from the authors' ``CLIP/mdecoder.py`` ``ClipAdapter(1024, 768)``
(pricai2025/ClipMPCAD @ db97221) on random weights and random input, batch 1 and 3, in two
layouts: "sequence" (batch-first, the reading of the module's comments) and "released"
(sequence-first, as the released model feeds it). It holds the adapter state dict, x, the
gates (ca_w, sa_w, fa_w), the gated tensors (ca, sa, fa) and the outputs (h, y). The file is
made outside this repository by a script that imports the release (nothing copied here).

We load the same state dict into ``aaclip.methods.clipmpcad.MADFF`` and compare:
- ``madff_mode=sequence`` on the batch-first x with the release's batch-first outputs (B 1, 3);
- ``madff_mode=tokenwise`` on x (1, N, C) with the release's sequence-first outputs at B 1;
- at B 3 the release mixes the images of a batch (gates over the batch axis): reported, the
  difference to our per-image ``tokenwise`` shows what the switch does not reproduce.

Run: PYTHONPATH=. .venv/bin/python benchmarks/check_clipmpcad_equivalence.py [reference.pt]
"""

from __future__ import annotations

import sys

import torch

from aaclip.methods.clipmpcad import MADFF

REFERENCE = "/tmp/released/madff_reference.pt"
KEYS = ("ca_w", "sa_w", "fa_w", "ca", "sa", "fa", "h", "y")


@torch.no_grad()
def ours(m: MADFF, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gates and outputs of our block on batch-first x (B, N, C), in the block's mode."""
    b, n, c = x.shape
    xs = x.reshape(b * n, 1, c) if m.mode == "tokenwise" else x
    ca_w = m.channel_attention(xs)
    ca = ca_w * xs
    sa_w = m.spatial_attention(ca)
    fa_w = m.frequency_attention(xs)
    out = {"ca_w": ca_w, "sa_w": sa_w, "fa_w": fa_w, "ca": ca, "sa": sa_w * ca, "fa": fa_w * xs}
    if m.mode == "tokenwise":  # per token: (B N, 1, *) -> (B, N, *)
        out = {k: v.reshape(b, n, -1) for k, v in out.items()}
    h, y = m(x)
    ca2, sa2, fa2 = m.gated(x)  # the forward's own gating equals the pieces above
    assert torch.equal(ca2, out["ca"]) and torch.equal(fa2, out["fa"])
    return {**out, "h": h, "y": y}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def main(path: str = REFERENCE) -> int:
    ref = torch.load(path, map_location="cpu", weights_only=False)
    meta = ref["meta"]
    print(f"reference: {path} (commit {meta['commit']}, N={meta['N']}, C={meta['C']})")
    blocks = {}
    for mode in ("sequence", "tokenwise"):
        m = MADFF(meta["C"], 768, mode=mode).eval()
        m.load_state_dict(ref["state_dict"])  # strict: the released names and shapes
        blocks[mode] = m
    worst = 0.0
    rows = []
    for b in (1, 3):
        seq = ref[f"B{b}"]["sequence"]
        got = ours(blocks["sequence"], seq["x"])
        for k in KEYS:
            d = max_diff(got[k], seq[k])
            worst = max(worst, d)
            rows.append((f"B={b} sequence (batch-first) vs madff_mode=sequence", k, d))
    rel = ref["B1"]["released"]  # (N, 1, *): sequence-first, batch 1
    got = ours(blocks["tokenwise"], rel["x"].transpose(0, 1))
    for k in KEYS:
        d = max_diff(got[k][0], rel[k][:, 0])
        worst = max(worst, d)
        rows.append(("B=1 released (sequence-first) vs madff_mode=tokenwise", k, d))
    rel3 = ref["B3"]["released"]  # (N, 3, *): gates mix the 3 images
    got3 = ours(blocks["tokenwise"], rel3["x"].transpose(0, 1))
    for k in ("y",):
        d = max_diff(got3[k], rel3[k].transpose(0, 1))
        rows.append(("B=3 released (mixes the batch) vs tokenwise [expected to differ]", k, d))
    for what, k, d in rows:
        print(f"{what:<68} {k:<5} max|diff| = {d:.3e}")
    print(f"worst over the compared (non-expected) rows: {worst:.3e}")
    ok = worst < 1e-4
    print("EQUIVALENT" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
