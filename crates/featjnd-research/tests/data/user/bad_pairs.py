"""Writes the small TorchScript pairs of tests/user_errors.rs into OUT (Debian's python3-torch):

  good/       a 3->8 conv head (stride 2) and a pooled linear tail: [B, 10] logits
  dense/      the same head, a conv tail returning dense maps [B, 2, H/2, W/2], no sidecar
              (so the task is the default `classification`)
  det/        the good pair with a sidecar declaring `detection-segmentation`
  raises/     a tail that raises
  nan_head/   a head returning NaN
  typo/       the good pair with a sidecar field misspelt (`taks`)
  no_tail/    head.pt only

usage: python3 bad_pairs.py OUT
"""
import json
import os
import shutil
import sys

import torch

torch.manual_seed(0)


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class NanHead(Head):
    def forward(self, x):
        return torch.relu(self.conv(x)) * float("nan")


class Logits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, f):
        return self.fc(f.mean(dim=(2, 3)))


class Dense(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 2, 1)

    def forward(self, f):
        return self.conv(f)


class Raises(torch.nn.Module):
    def forward(self, f):
        if f.sum() > -1e30:
            raise RuntimeError("this tail always fails")
        return f


def save(name, head, tail, sidecar=None):
    d = os.path.join(sys.argv[1], name)
    os.makedirs(d, exist_ok=True)
    torch.jit.script(head.eval()).save(os.path.join(d, "head.pt"))
    if tail is not None:
        torch.jit.script(tail.eval()).save(os.path.join(d, "tail.pt"))
    if sidecar is not None:
        with open(os.path.join(d, "split.json"), "w") as f:
            f.write(sidecar)


head = Head()
save("good", head, Logits())
save("dense", head, Dense())
save("det", head, Logits(), json.dumps({"task": "detection-segmentation"}))
save("raises", head, Raises())
save("nan_head", NanHead(), Logits())
save("typo", head, Logits(), '{"taks": "classification"}')
save("no_tail", head, None)


class TwoMaps(torch.nn.Module):
    """Segmentation logits [B, 3, h, w] and a depth-like map [B, 1, h, w]."""

    def __init__(self):
        super().__init__()
        self.seg = torch.nn.Conv2d(8, 3, 1)
        self.depth = torch.nn.Conv2d(8, 1, 1)

    def forward(self, f):
        return self.seg(f), self.depth(f)


# Dense tails declared as such (tests/user_errors.rs runs them through every command).
save("dense_softmax", head, Dense(), json.dumps({"task": "dense", "outputs": ["softmax"]}))
save("dense_two", head, TwoMaps(), json.dumps({"task": "dense", "outputs": ["softmax", "identity"]}))
save("dense_wrong", head, TwoMaps(), json.dumps({"task": "dense", "outputs": ["sigmoid"]}))
save("dense_no_outputs", head, Dense(), json.dumps({"task": "dense"}))
