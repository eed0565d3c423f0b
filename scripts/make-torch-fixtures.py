#!/usr/bin/env python3
"""Writes the PyTorch fixtures that `tests/torch_interop.rs` checks bnc against: d2l's
LeNet-BN (the nn.Sequential of the "Batch Normalization" lesson) with random weights and
random running statistics, its state_dict saved with `safetensors.torch.save_file`, its
eval-mode logits for a fixed input, and the running statistics after one train-mode forward
pass (PyTorch's momentum and unbiased-variance update).

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy safetensors
    /tmp/torchvenv/bin/python scripts/make-torch-fixtures.py        # from the repository root

Outputs (committed):
  tests/fixtures/d2l_lenet_bn_torch.safetensors     the state_dict (0.weight, 1.running_var, ...)
  tests/fixtures/d2l_lenet_bn_torch_io.safetensors  x [4,1,28,28] and eval logits [4,10];
      train_x [8,1,28,28], train_logits [8,10] (train mode) and after.<name> for every
      running_mean / running_var after that one train-mode forward pass

With `--check-load FILE` it instead loads FILE (e.g. the output of `bnc weights rename
--reverse`) into the same module with a strict load_state_dict, and prints its eval-mode
logits for the fixture input (and, with `--data DIR`, its Fashion-MNIST test accuracy).
"""
import argparse
import gzip
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def lenet_bn():
    """d2l's LeNet-BN, with the input sizes written out (as in d2l before Lazy modules)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(256, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10))


def test_images(data):
    raw = gzip.open(os.path.join(data, "t10k-images-idx3-ubyte.gz")).read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    raw = gzip.open(os.path.join(data, "t10k-labels-idx1-ubyte.gz")).read()
    y = np.frombuffer(raw, np.uint8, offset=8)
    return torch.from_numpy(x.astype(np.float32) / 255), torch.from_numpy(y.astype(np.int64))


def check_load(path, data):
    net = lenet_bn()
    net.load_state_dict(load_file(path), strict=True)
    net.eval()
    io = load_file(os.path.join(OUT, "d2l_lenet_bn_torch_io.safetensors"))
    with torch.no_grad():
        print("strict load_state_dict: ok")
        print("eval logits[0]:", np.array2string(net(io["x"])[0].numpy(), precision=4))
        if data:
            x, y = test_images(data)
            acc = (net(x).argmax(1) == y).float().mean().item()
            print(f"test accuracy: {acc:.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-load", metavar="FILE")
    ap.add_argument("--data", metavar="DIR")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.check_load:
        return check_load(args.check_load, args.data)

    torch.manual_seed(6)
    net = lenet_bn()  # PyTorch's default (Kaiming-uniform) weights for conv and linear
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5))
                m.bias.copy_(torch.empty(c).normal_(0, 0.5))
                m.running_mean.copy_(torch.empty(c).normal_(0, 0.5))
                m.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0))
                m.num_batches_tracked.fill_(37)
    os.makedirs(OUT, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, os.path.join(OUT, "d2l_lenet_bn_torch.safetensors"))

    io = {"x": torch.rand(4, 1, 28, 28), "train_x": torch.rand(8, 1, 28, 28)}
    net.eval()
    with torch.no_grad():
        io["logits"] = net(io["x"])
    net.train()
    with torch.no_grad():
        io["train_logits"] = net(io["train_x"])
    for k, v in net.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            io[f"after.{k}"] = v.clone()
    save_file(io, os.path.join(OUT, "d2l_lenet_bn_torch_io.safetensors"))
    print(f"torch {torch.__version__}: wrote {len(state)} tensors; "
          f"eval logits[0]: {np.array2string(io['logits'][0].numpy(), precision=4)}")


if __name__ == "__main__":
    main()
