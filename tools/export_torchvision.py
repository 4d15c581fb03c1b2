#!/usr/bin/env python3
"""Export a torchvision model as a TorchScript head/tail pair for featjnd.

    python tools/export_torchvision.py resnet50 --weights IMAGENET1K_V2 --split layer2 --out out/r50-layer2
    python tools/export_torchvision.py resnet50 --weights my_resnet50.pth --num-classes 10 --split layer3.2 --out out/mine
    python tools/export_torchvision.py maskrcnn_resnet50_fpn --weights DEFAULT --split fpn --out out/mrcnn-fpn

then, from Rust, `featjnd::model::torchscript::TorchScriptPair::load_dir("out/r50-layer2", device)`.

Tested with Debian's python3-torch 1.13 and python3-torchvision 0.14 (`/usr/bin/python3`): the
files load in featjnd's libtorch 2.11 and match PyTorch's run of them, see
crates/featjnd-research/tests/torchvision_ref.rs and docs/torchvision-ops.md. Needs torchvision >=
0.14 (`torchvision.models.get_model`). Detection tails call torchvision's C++ operators (nms,
roi_align); featjnd registers CPU implementations of them itself (docs/torchvision-ops.md).

Random initialisation (`--weights none`) is seeded with --seed (default 0), so an export is
reproducible.

What it writes into --out:
  head.pt     TorchScript: forward(x: Tensor[B, 3, H, W]) -> feature(s) at the split
  tail.pt     TorchScript: forward(*features) -> task output(s); the features come back as separate
              positional arguments, in the head's order (featjnd's convention)
  split.json  the sidecar read by featjnd (schema in src/model/torchscript.rs)

Input convention of every exported pair: RGB in [0, 1], [B, 3, H, W], float32. With
`--normalize inside` (default) the head subtracts the ImageNet mean and divides by the std itself;
with `--normalize outside` it does not, and split.json says `normalized_inside: false` with the
mean/std so that featjnd normalises before calling the head (the features are the same).

Models and splits:
  * ResNet family (resnet18/34/50/101/152, resnext*, wide_resnet*): split `stem` (after maxpool),
    `layerK` (after layer K, K = 1..4) or `layerK.i` (after block i of layer K). head = stem..split,
    tail = the rest + avgpool + flatten + fc -> logits [B, classes]. Scripted (torch.jit.script) by
    default, or traced with --trace.
  * Mask R-CNN (maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2): split `fpn`. head = normalise +
    backbone (ResNet body + FPN) -> an ordered dict {"0", "1", "2", "3", "pool"} of 5 tensors
    (strides 4, 8, 16, 32, 64; featjnd keeps the dict's order). tail = RPN + RoI heads + mask
    pasting -> a tuple (boxes [N, 4] xyxy in input pixels, labels [N] int64, scores [N],
    masks [N, 1, H, W] probabilities, batch_index [N] int64), detections of all images
    concatenated. Limits, honestly:
      - torchvision's GeneralizedRCNNTransform (resize to min_size 800, pad to a multiple of 32) is
        NOT in the head: the head takes the image as given and asserts that H and W are multiples
        of 32; the tail infers the image size as 4x the size of feature "0". Give images at the
        scale the weights expect (shorter side ~800 for the COCO weights).
      - Scripting the RPN/RoI heads/postprocess outside torchvision's own GeneralizedRCNN wrapper is
        the least certain part of this script; if torch.jit.script fails on the tail, the error is
        printed as is. No tracing fallback is offered (tracing detection postprocessing bakes in
        data-dependent shapes and is wrong in general).
      - featjnd's `detection-segmentation` task reads the outputs of its own shapes detector; these
        Mask R-CNN outputs are not understood by featjnd's detection metrics yet.

  * Semantic segmentation (fcn_resnet50/101, deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large,
    lraspp_mobilenet_v3_large): split `backbone`. head = normalise + backbone -> the backbone's
    ordered dict without the auxiliary output ({"out"} for FCN/DeepLabV3, {"low", "high"} for
    LR-ASPP). tail = classifier + bilinear upsampling by the backbone's measured output stride ->
    logits [B, classes, H, W], what the eager model returns as result["out"] when H and W are
    multiples of that stride (8 or 16; the head asserts nothing, the check uses 224 x 224).
    split.json: `task: "dense"`, `outputs: ["softmax"]` (docs/user-models.md). The auxiliary
    classifier of FCN/DeepLabV3 (`aux_loss`) is left out.

The script checks `tail(head(x))` against the eager model on an example input (random unless
--image is given; random noise usually yields no Mask R-CNN detections, so use --image there),
after saving and re-loading the TorchScript files, prints the max abs differences and exits with
status 1 when one exceeds --tol.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FPN_NAMES = ["0", "1", "2", "3", "pool"]


class Normalize(nn.Module):
    """`(x - mean) / std` per channel when enabled, identity otherwise."""

    def __init__(self, mean: List[float], std: List[float], enabled: bool):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.enabled = enabled

    def forward(self, x: Tensor) -> Tensor:
        if self.enabled:
            return (x - self.mean) / self.std
        return x


# ---------------------------------------------------------------------------------------------
# ResNet family


def resnet_sequence(m: nn.Module) -> Tuple[List[nn.Module], Dict[str, int]]:
    """The modules of a torchvision ResNet before avgpool, in order, and for each split name the
    number of leading modules that form the head."""
    seq: List[nn.Module] = [m.conv1, m.bn1, m.relu, m.maxpool]
    points = {"stem": len(seq)}
    for k in range(1, 5):
        layer = getattr(m, f"layer{k}")
        for i, block in enumerate(layer):
            seq.append(block)
            points[f"layer{k}.{i}"] = len(seq)
        points[f"layer{k}"] = len(seq)
    return seq, points


def sequential(mods: List[nn.Module]) -> nn.Module:
    return nn.Sequential(*mods) if mods else nn.Identity()


class ResNetHead(nn.Module):
    def __init__(self, norm: Normalize, body: nn.Module):
        super().__init__()
        self.norm = norm
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.norm(x))


class ResNetTail(nn.Module):
    """The rest of torchvision's ResNet._forward_impl: remaining blocks, avgpool, flatten, fc."""

    def __init__(self, body: nn.Module, avgpool: nn.Module, fc: nn.Module):
        super().__init__()
        self.body = body
        self.avgpool = avgpool
        self.fc = fc

    def forward(self, f: Tensor) -> Tensor:
        x = self.avgpool(self.body(f))
        return self.fc(torch.flatten(x, 1))


def is_resnet(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv1", "bn1", "maxpool", "layer1", "layer4", "avgpool", "fc"))


def export_resnet(model, args, norm: Normalize, x: Tensor):
    seq, points = resnet_sequence(model)
    if args.split not in points:
        sys.exit(f"unknown split {args.split!r} for {args.model}; valid: {', '.join(points)}")
    k = points[args.split]
    head = ResNetHead(norm, sequential(seq[:k])).eval()
    tail = ResNetTail(sequential(seq[k:]), model.avgpool, model.fc).eval()
    with torch.no_grad():
        f = head(x)
    if args.trace:
        head_ts = torch.jit.trace(head, x)
        tail_ts = torch.jit.trace(tail, f)
    else:
        head_ts = torch.jit.script(head)
        tail_ts = torch.jit.script(tail)

    def reference(x: Tensor) -> List[Tensor]:
        with torch.no_grad():
            return [model(norm_always(norm)(x))]

    def composed(h, t, x: Tensor) -> List[Tensor]:
        with torch.no_grad():
            return [t(h(feed(norm, x)))]

    spec = {
        "split": args.split,
        "task": "classification",
        "num_features": 1,
        "feature_names": [args.split],
    }
    return head_ts, tail_ts, spec, reference, composed


# ---------------------------------------------------------------------------------------------
# Mask R-CNN (FPN split)


class DetHead(nn.Module):
    def __init__(self, norm: Normalize, backbone: nn.Module):
        super().__init__()
        self.norm = norm
        self.backbone = backbone

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        torch._assert(
            x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0,
            "featjnd Mask R-CNN head: H and W must be multiples of 32 (the head does not resize or pad)",
        )
        return self.backbone(self.norm(x))


class DetTail(nn.Module):
    """RPN + RoI heads + torchvision's postprocess (mask pasting; no rescaling since the head does
    not resize), with the detections of all images flattened into five tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        self.transform = model.transform

    def forward(
        self, f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, pool: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        features: Dict[str, Tensor] = {"0": f0, "1": f1, "2": f2, "3": f3, "pool": pool}
        b = f0.shape[0]
        h = f0.shape[-2] * 4
        w = f0.shape[-1] * 4
        sizes: List[Tuple[int, int]] = []
        for _ in range(b):
            sizes.append((h, w))
        # The RPN's anchor generator only reads the shape of images.tensors.
        images = ImageList(f0.new_zeros([1, 1, 1, 1]).expand([b, 3, h, w]), sizes)
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        detections = self.transform.postprocess(detections, images.image_sizes, sizes)
        boxes: List[Tensor] = []
        labels: List[Tensor] = []
        scores: List[Tensor] = []
        masks: List[Tensor] = []
        index: List[Tensor] = []
        for i, d in enumerate(detections):
            n = d["boxes"].shape[0]
            boxes.append(d["boxes"])
            labels.append(d["labels"])
            scores.append(d["scores"])
            masks.append(d["masks"])
            index.append(torch.full([n], i, dtype=torch.int64, device=f0.device))
        return torch.cat(boxes), torch.cat(labels), torch.cat(scores), torch.cat(masks), torch.cat(index)


def export_maskrcnn(model, args, norm: Normalize, x: Tensor):
    if args.split != "fpn":
        sys.exit(f"{args.model}: the only split is 'fpn' (backbone + FPN | RPN + RoI heads)")
    if args.trace:
        sys.exit("--trace is not supported for Mask R-CNN (see the notes at the top of this file)")
    if x.shape[-2] % 32 or x.shape[-1] % 32:
        sys.exit(f"--check-size must be multiples of 32 for {args.model}, got {tuple(x.shape[-2:])}")
    head = DetHead(norm, model.backbone).eval()
    tail = DetTail(model).eval()
    head_ts = torch.jit.script(head)
    tail_ts = torch.jit.script(tail)

    def reference(x: Tensor) -> List[Tensor]:
        # The eager model resizes with scale 1 (the shorter side is min_size) and pads nothing
        # (multiples of 32), so it sees the same pixels as the head; check_size enforces this.
        with torch.no_grad():
            out = model(list(x))
        cat = lambda key: torch.cat([o[key] for o in out])
        index = torch.cat([torch.full([o["boxes"].shape[0]], i, dtype=torch.int64) for i, o in enumerate(out)])
        return [cat("boxes"), cat("labels"), cat("scores"), cat("masks"), index]

    def composed(h, t, x: Tensor) -> List[Tensor]:
        with torch.no_grad():
            feats = h(feed(norm, x))
            if list(feats.keys()) != FPN_NAMES:
                print(f"warning: head returned keys {list(feats.keys())}, expected {FPN_NAMES}")
            return list(t(*feats.values()))

    spec = {
        "split": "fpn",
        "task": "detection-segmentation",
        "num_features": 5,
        "feature_names": FPN_NAMES,
    }
    return head_ts, tail_ts, spec, reference, composed


# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Semantic segmentation (backbone split)

SEGMENTATION = ("fcn_", "deeplabv3_", "lraspp_")


def is_segmentation(name: str) -> bool:
    return name.startswith(SEGMENTATION)


class SegHead(nn.Module):
    def __init__(self, norm: Normalize, backbone: nn.Module):
        super().__init__()
        self.norm = norm
        self.backbone = backbone

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return self.backbone(self.norm(x))


class SegTailOut(nn.Module):
    """FCN / DeepLabV3: classifier(out), upsampled by `stride`."""

    def __init__(self, classifier: nn.Module, stride: int):
        super().__init__()
        self.classifier = classifier
        self.stride = stride

    def forward(self, out: Tensor) -> Tensor:
        y = self.classifier(out)
        size = [out.shape[-2] * self.stride, out.shape[-1] * self.stride]
        return nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)


class SegTailLowHigh(nn.Module):
    """LR-ASPP: classifier({"low", "high"}), upsampled from the `low` resolution by `stride`."""

    def __init__(self, classifier: nn.Module, stride: int):
        super().__init__()
        self.classifier = classifier
        self.stride = stride

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        y = self.classifier({"low": low, "high": high})
        size = [low.shape[-2] * self.stride, low.shape[-1] * self.stride]
        return nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)


def export_segmentation(model, args, norm: Normalize, x: Tensor):
    if args.split != "backbone":
        sys.exit(f"unknown split {args.split!r} for {args.model}; valid: backbone")
    bb = model.backbone
    bb.return_layers = {k: v for k, v in bb.return_layers.items() if v != "aux"}
    head = SegHead(norm, bb).eval()
    with torch.no_grad():
        f = head(x)
    names = list(f.keys())
    lraspp = names == ["low", "high"]
    if not lraspp and names != ["out"]:
        sys.exit(f"{args.model}: unexpected backbone outputs {names}")
    first = f["low"] if lraspp else f["out"]
    if x.shape[-2] % first.shape[-2] or x.shape[-1] % first.shape[-1]:
        sys.exit(f"--check-size {list(x.shape[-2:])} is not a multiple of the backbone's stride")
    stride = x.shape[-2] // first.shape[-2]
    tail = (SegTailLowHigh if lraspp else SegTailOut)(model.classifier, stride).eval()
    head_ts, tail_ts = torch.jit.script(head), torch.jit.script(tail)

    def reference(x: Tensor) -> List[Tensor]:
        with torch.no_grad():
            return [model(norm_always(norm)(x))["out"]]

    def composed(h, t, x: Tensor) -> List[Tensor]:
        with torch.no_grad():
            feats = h(feed(norm, x))
            return [t(*[feats[k] for k in names])]

    spec = {
        "split": "backbone",
        "task": "dense",
        "outputs": ["softmax"],
        "num_features": len(names),
        "feature_names": names,
    }
    return head_ts, tail_ts, spec, reference, composed


def norm_always(norm: Normalize) -> Normalize:
    """The normalisation the eager model needs, whether or not the head does it."""
    return Normalize(norm.mean.flatten().tolist(), norm.std.flatten().tolist(), True)


def feed(norm: Normalize, x: Tensor) -> Tensor:
    """What featjnd passes to head.pt: x itself when the head normalises, else normalised x."""
    return x if norm.enabled else norm_always(norm)(x)


def load_model(args) -> nn.Module:
    detection = args.model.startswith("maskrcnn")
    kw = {}
    if args.num_classes is not None:
        kw["num_classes"] = args.num_classes
    det_opts = {
        "min_size": args.min_size,
        "max_size": args.max_size,
        "box_score_thresh": args.box_score_thresh,
        "box_detections_per_img": args.detections_per_img,
    }
    for key, value in det_opts.items():
        if value is not None:
            if not detection:
                sys.exit(f"--{key.replace('_', '-')} applies to Mask R-CNN only")
            kw[key] = value
    torch.manual_seed(args.seed)
    w = args.weights
    if w.lower() == "none" or os.path.isfile(w):
        if detection or is_segmentation(args.model):
            kw["weights_backbone"] = None  # never download backbone weights
        model = torchvision.models.get_model(args.model, weights=None, **kw)
        if os.path.isfile(w):
            sd = torch.load(w, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
            if not isinstance(sd, dict):
                sys.exit(f"{w}: expected a state dict, got {type(sd).__name__}")
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
            model.load_state_dict(sd, strict=True)
    else:
        # A weight enum name: "DEFAULT", "IMAGENET1K_V2", "ResNet50_Weights.IMAGENET1K_V2", ...
        model = torchvision.models.get_model(args.model, weights=w, **kw)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def example_input(args) -> Tensor:
    h, w = args.check_size
    if args.image:
        from torchvision.io import ImageReadMode, read_image

        img = read_image(args.image, mode=ImageReadMode.RGB).float() / 255.0
        img = torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)
        return img.clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, h, w, generator=g)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="torchvision model name: resnet50 (any ResNet), maskrcnn_resnet50_fpn[_v2], "
                                  "fcn_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large, ...")
    ap.add_argument("--weights", default="DEFAULT",
                    help="a torchvision weight enum name (DEFAULT, IMAGENET1K_V2, COCO_V1, ...), "
                         "a state-dict file (.pth/.pt), or 'none' (random init)")
    ap.add_argument("--num-classes", type=int, default=None,
                    help="number of classes of the model in a state-dict file, if not torchvision's")
    ap.add_argument("--split", required=True, help="stem | layerK | layerK.i (ResNet); fpn (Mask R-CNN); backbone (segmentation)")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--normalize", choices=["inside", "outside"], default="inside",
                    help="ImageNet normalisation in head.pt (inside) or done by featjnd (outside)")
    ap.add_argument("--trace", action="store_true", help="torch.jit.trace instead of torch.jit.script (ResNet only)")
    ap.add_argument("--check-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                    help="example input size for the check (default 224 224; 800 1088 for Mask R-CNN)")
    ap.add_argument("--image", default=None, help="an image file for the check (resized to --check-size)")
    ap.add_argument("--tol", type=float, default=1e-3, help="max abs difference accepted by the check")
    ap.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model (random init)")
    ap.add_argument("--min-size", type=int, default=None,
                    help="Mask R-CNN: the transform's min_size (torchvision default 800); the image scale the "
                         "eager check resizes to, so give --check-size with this shorter side")
    ap.add_argument("--max-size", type=int, default=None, help="Mask R-CNN: the transform's max_size (default 1333)")
    ap.add_argument("--box-score-thresh", type=float, default=None,
                    help="Mask R-CNN: minimum detection score kept by the RoI heads (torchvision default 0.05)")
    ap.add_argument("--detections-per-img", type=int, default=None,
                    help="Mask R-CNN: maximum detections per image (torchvision default 100)")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = load_model(args)
    detection = args.model.startswith("maskrcnn")
    if args.check_size is None:
        if detection and args.min_size is not None:
            sys.exit("--min-size needs --check-size H W with min(H, W) == --min-size")
        args.check_size = [800, 1088] if detection else [224, 224]
    if detection:
        mean, std = list(model.transform.image_mean), list(model.transform.image_std)
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    norm = Normalize(mean, std, args.normalize == "inside").eval()
    x = example_input(args)

    if detection:
        if not hasattr(model, "roi_heads") or getattr(model.roi_heads, "mask_head", None) is None:
            sys.exit(f"{args.model} is not a Mask R-CNN")
        if min(args.check_size) != min(model.transform.min_size) or max(args.check_size) > model.transform.max_size:
            print(f"warning: the eager model will resize {args.check_size} (min_size {model.transform.min_size}, "
                  f"max_size {model.transform.max_size}); the check then compares different pixels")
        head_ts, tail_ts, spec, reference, composed = export_maskrcnn(model, args, norm, x)
    elif is_segmentation(args.model):
        head_ts, tail_ts, spec, reference, composed = export_segmentation(model, args, norm, x)
    elif is_resnet(model):
        head_ts, tail_ts, spec, reference, composed = export_resnet(model, args, norm, x)
    else:
        sys.exit(f"{args.model}: only the ResNet family, Mask R-CNN and the segmentation models are supported")

    os.makedirs(args.out, exist_ok=True)
    head_path, tail_path = os.path.join(args.out, "head.pt"), os.path.join(args.out, "tail.pt")
    head_ts.save(head_path)
    tail_ts.save(tail_path)
    head_ld = torch.jit.load(head_path).eval()
    tail_ld = torch.jit.load(tail_path).eval()

    ref = reference(x)
    got = composed(head_ld, tail_ld, x)
    names = ["logits"] if not detection else ["boxes", "labels", "scores", "masks", "batch_index"]
    if is_segmentation(args.model):
        names = ["logits [B, classes, H, W]"]
    worst = 0.0
    for name, a, b in zip(names, ref, got):
        d = max_abs_diff(a, b)
        worst = max(worst, d)
        print(f"max |tail(head(x)) - model(x)| for {name} {tuple(b.shape)}: {d:.3g}")
    if detection and ref[0].shape[0] == 0:
        print("note: no detections on the example input; pass --image to check the detection path")

    spec = {
        "version": 1,
        "arch": f"torchvision-{args.model}",
        **spec,
        "input": {
            "range": [0.0, 1.0],
            "normalized_inside": args.normalize == "inside",
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        },
        "head": "head.pt",
        "tail": "tail.pt",
        "description": f"{args.model} weights={args.weights} seed={args.seed} split={args.split} "
                       f"{'traced' if args.trace else 'scripted'} with torch {torch.__version__}, "
                       f"torchvision {torchvision.__version__}; check max abs diff {worst:.3g}",
    }
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    print(f"wrote {head_path}, {tail_path}, {os.path.join(args.out, 'split.json')}")
    if not worst <= args.tol:
        print(f"FAILED: max abs difference {worst:.3g} > --tol {args.tol}")
        sys.exit(1)


if __name__ == "__main__":
    main()
