#!/usr/bin/env python3
"""PyTorch reference outputs for featjnd's reference tests (crates/featjnd-research/tests/torchvision_ref.rs).

    torchvision_ref.py mobilenet --weights W.safetensors --input x.npy --out DIR
        torchvision's mobilenet_v2 with the weights of featjnd's own safetensors file (read here
        without the safetensors package), on x [B, 3, H, W] RGB in [0, 1]; writes DIR/logits.npy
        and DIR/stage2.npy, stage3.npy, stage5.npy, final.npy (the outputs of features[:4], [:7], [:14], [:19]).

    torchvision_ref.py pair --dir PAIR --input x.npy --out DIR
        torch.jit.load of PAIR/head.pt and PAIR/tail.pt (as written by export_torchvision.py);
        writes DIR/feat_<i>.npy (the head's tensors, a dict's in its order) and DIR/out_<i>.npy
        (the tail's outputs on them). Applies split.json's mean/std first when the head does not
        normalise (featjnd's convention).

    torchvision_ref.py ops --out DIR
        A scripted module DIR/ops.pt calling torchvision::roi_align (sampling ratios 2, 0 =
        adaptive, 3; aligned and not; several scales and pooled sizes; RoIs partly or wholly outside
        the map, tiny and degenerate ones) and torchvision::nms (two thresholds, tied scores,
        batched_nms), seeded inputs DIR/in_<name>.npy, torchvision's outputs DIR/out_<i>.npy, and
        for the gradient check DIR/w_<i>.npy (weights) and DIR/grad_x.npy = d/dx of
        sum_i sum(out_i * w_i) over the roi_align outputs (i < DIR/n_roi.txt).

Everything float32, CPU, no gradients. Meant for /usr/bin/python3 with Debian's python3-torch and
python3-torchvision (1.13 / 0.14); `import torchvision` registers torchvision's own operators.
"""
import argparse
import json
import os
import struct
import time
from typing import List

import numpy as np
import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)


def save(path: str, t: torch.Tensor) -> None:
    np.save(path, t.detach().contiguous().numpy())


def read_safetensors(path: str) -> dict:
    """The tensors of a safetensors file (F32 and I64 only), as torch tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        a = np.frombuffer(data[base + start:base + end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(a.copy())
    return out


def mobilenet(args) -> None:
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    sd = read_safetensors(args.weights)
    model.load_state_dict(sd, strict=True)
    x = torch.from_numpy(np.load(args.input))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        z = (x - mean) / std
        for name, k in (("stage2", 4), ("stage3", 7), ("stage5", 14), ("final", 19)):
            save(os.path.join(args.out, f"{name}.npy"), model.features[:k](z))
        save(os.path.join(args.out, "logits.npy"), model(z))


def pair(args) -> None:
    spec = {}
    sidecar = os.path.join(args.dir, "split.json")
    if os.path.isfile(sidecar):
        with open(sidecar) as f:
            spec = json.load(f)
    head = torch.jit.load(os.path.join(args.dir, spec.get("head", "head.pt"))).eval()
    tail = torch.jit.load(os.path.join(args.dir, spec.get("tail", "tail.pt"))).eval()
    x = torch.from_numpy(np.load(args.input))
    inp = spec.get("input", {})
    if not inp.get("normalized_inside", True) and inp.get("mean") is not None:
        c = len(inp["mean"])
        x = (x - torch.tensor(inp["mean"]).view(1, c, 1, 1)) / torch.tensor(inp["std"]).view(1, c, 1, 1)
    t0 = time.time()
    with torch.no_grad():
        f = head(x)
        feats = list(f.values()) if isinstance(f, dict) else list(f) if isinstance(f, (list, tuple)) else [f]
        for i, t in enumerate(feats):
            save(os.path.join(args.out, f"feat_{i}.npy"), t)
        o = tail(*feats)
        outs = list(o.values()) if isinstance(o, dict) else list(o) if isinstance(o, (list, tuple)) else [o]
        for i, t in enumerate(outs):
            save(os.path.join(args.out, f"out_{i}.npy"), t)
    print(f"torchvision_ref pair: {len(feats)} feature tensor(s) in {time.time() - t0:.1f} s "
          f"(torch {torch.__version__}, torchvision {torchvision.__version__})")


class Ops(torch.nn.Module):
    def forward(self, x: torch.Tensor, rois: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
                tied: torch.Tensor, idxs: torch.Tensor) -> List[torch.Tensor]:
        ra = torchvision.ops.roi_align
        outs: List[torch.Tensor] = [
            ra(x, rois, [7, 7], 0.25, 2, False),
            ra(x, rois, [7, 7], 0.25, 0, True),
            ra(x, rois, [14, 14], 0.5, 0, False),
            ra(x, rois, [5, 3], 0.125, 3, True),
            ra(x, rois, [2, 2], 1.0, -1, False),
            torch.ops.torchvision.nms(boxes, scores, 0.5),
            torch.ops.torchvision.nms(boxes, scores, 0.2),
            torch.ops.torchvision.nms(boxes, tied, 0.5),
            torchvision.ops.batched_nms(boxes, scores, idxs, 0.4),
            torch.ops.torchvision.nms(boxes[:0], scores[:0], 0.5),
        ]
        return outs


N_ROI_OUTPUTS = 5


def ops(args) -> None:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, 4, 13, 17, generator=g)
    k = 48
    # Boxes in input-image coordinates (feature maps are 13 x 17 at scale 1, 52 x 68 at 0.25):
    # mostly inside, some partly or wholly outside, a few tiny, two degenerate (x2 < x1).
    xy = torch.rand(k, 2, generator=g) * torch.tensor([90.0, 70.0]) - 10.0
    wh = torch.rand(k, 2, generator=g) * 40.0
    wh[:6] = torch.rand(6, 2, generator=g) * 0.8
    boxes4 = torch.cat([xy, xy + wh], 1)
    boxes4[6] = torch.tensor([30.0, 20.0, 25.0, 18.0])
    boxes4[7] = torch.tensor([-30.0, -30.0, -12.0, -20.0])
    batch = (torch.arange(k) % 2).float()[:, None]
    rois = torch.cat([batch, boxes4], 1)
    nb = 300
    c = torch.rand(nb, 2, generator=g) * 40.0
    s = torch.rand(nb, 2, generator=g) * 30.0 + 1.0
    boxes = torch.cat([c, c + s], 1)
    scores = torch.rand(nb, generator=g)
    tied = (scores * 5).floor() / 5
    idxs = torch.randint(0, 4, (nb,), generator=g)
    inputs = {"x": x, "rois": rois, "boxes": boxes, "scores": scores, "tied": tied, "idxs": idxs}
    for name, t in inputs.items():
        save(os.path.join(args.out, f"in_{name}.npy"), t)
    m = torch.jit.script(Ops())
    m.save(os.path.join(args.out, "ops.pt"))
    m = torch.jit.load(os.path.join(args.out, "ops.pt"))
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        outs = m(xg, rois, boxes, scores, tied, idxs)
        loss = torch.zeros(())
        for i in range(N_ROI_OUTPUTS):
            w = torch.randn(outs[i].shape, generator=g)
            save(os.path.join(args.out, f"w_{i}.npy"), w)
            loss = loss + (outs[i] * w).sum()
        (grad,) = torch.autograd.grad(loss, [xg])
    save(os.path.join(args.out, "grad_x.npy"), grad)
    for i, t in enumerate(outs):
        save(os.path.join(args.out, f"out_{i}.npy"), t)
    with open(os.path.join(args.out, "n_roi.txt"), "w") as f:
        f.write(f"{N_ROI_OUTPUTS}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mobilenet")
    m.add_argument("--weights", required=True)
    m.add_argument("--input", required=True)
    m.add_argument("--out", required=True)
    p = sub.add_parser("pair")
    p.add_argument("--dir", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    o = sub.add_parser("ops")
    o.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    os.makedirs(args.out, exist_ok=True)
    {"mobilenet": mobilenet, "pair": pair, "ops": ops}[args.cmd](args)


if __name__ == "__main__":
    main()
