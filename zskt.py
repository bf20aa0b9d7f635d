"""Zero-shot Knowledge Transfer via Adversarial Belief Matching (Micaelli & Storkey, NeurIPS 2019).

One file, in the paper's order: data -> models -> losses -> Algorithm 1 -> evaluation
(accuracy, transition curves, MTE) -> a training run -> CLI; zskt_utils.py holds what runs around
the method (files, run directories, signals, reports). "Section", "Eq.", "Algorithm", "Table" and
"Figure" refer to the paper (arXiv 1905.09768 v3); "the author's code" is
github.com/polo5/ZeroShotKnowledgeTransfer (and FewShotKnowledgeTransfer for the KD+AT baselines).

    python zskt.py                                    # offline demo on the built-in `shapes` data
    python zskt.py --dataset cifar10 --teacher wrn-40-2 --student wrn-16-1
    python zskt.py curves --teacher-checkpoint checkpoints/shapes-wrn-16-1.pt --student-checkpoint runs/demo/student.pt
"""
import argparse
import csv
import dataclasses
import functools
import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# What runs around the method. Some names are imported only to be part of the API (zskt.show_samples, ...).
from zskt_utils import (CONFIG_HELP, UserError, Progress, Stopped, StopOnSignal, _download, check_teacher, command,
                        default_teacher_path, denormalize, device_name, eval_mode, load_checkpoint, load_folder,
                        log_tensorboard, mean_std, panel_names, plot_run, plot_samples, plot_training,
                        plot_transition_curves, prepare_run_dir, read_run, report, resolve_device, rng_state, run_cli,
                        run_lock, save_atomic, save_samples, seed_everything, set_rng_state, show_samples, tee,
                        tensorboard_writer, write_csv, write_json)


# ----------------------------------------------------------------------------------------------
# Data (Section 4.1). Every dataset is held in memory as uint8 images (N, 3, H, W) and int64 labels:
# 32x32 for CIFAR-10 and SVHN, 16x16 for shapes, --image-size (32) for folders.

# The author's constants, so that the author's published teachers work unchanged.
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "shapes": ((0.5021, 0.5012, 0.5004), (0.2900, 0.2902, 0.2893)),  # measured on its train split
}
DATASETS = ("shapes", "cifar10", "svhn", "folder")
SHAPES_CLASSES = ("disk", "square", "triangle", "plus", "ring", "frame", "star", "stripes",
                  "checks", "dots")
SHAPES_SIZE = {"train": 20_000, "test": 2_000}


def make_shapes(n, seed, size=16, chunk=2_000):
    """The built-in offline dataset: 10 classes that differ only by shape or texture.

    Colour, position, size, rotation, texture frequency and noise are random, so a classifier
    has to learn shapes, not pixels. 16x16 makes the demo 3x cheaper than 32x32; textures have
    periods of 3.5-10 pixels, coarse enough not to alias. Deterministic in `seed`.
    """
    g = torch.Generator().manual_seed(seed)
    U = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)
    y = torch.randperm(n, generator=g) % 10
    cx, cy, scale, angle, freq = U(-.3, .3), U(-.3, .3), U(.55, .8), U(0, 2 * math.pi), U(1.25, 2.5)
    fg = U(0, 1, n, 3)
    bg = (fg + U(.3, .7, n, 3)) % 1  # every channel differs from the foreground by >= 0.3
    sigma = U(0, .08)
    noise = torch.randn(n, 3, size, size, generator=g)
    lin = torch.linspace(-1, 1, size)
    py, px = torch.meshgrid(lin, lin, indexing="ij")
    images = []
    for i in range(0, n, chunk):
        E = lambda t: t[i:i + chunk, None, None]
        dx, dy, c, s = px - E(cx), py - E(cy), E(torch.cos(angle)), E(torch.sin(angle))
        u, v = (c * dx + s * dy) / E(scale), (c * dy - s * dx) / E(scale)  # rotated, scaled frame
        r, th, au, av, f = torch.hypot(u, v), torch.atan2(v, u), u.abs(), v.abs(), E(freq) * math.pi
        masks = torch.stack([
            r < 1,                                                   # disk
            (au < .8) & (av < .8),                                   # square
            (v > -.5) & (v < 1 - 3 ** .5 * au),                      # triangle
            ((au < .3) | (av < .3)) & (au < 1) & (av < 1),           # plus
            (r < 1) & (r > .6),                                      # ring
            (au < .85) & (av < .85) & ~((au < .45) & (av < .45)),    # frame
            r < .6 + .4 * torch.cos(5 * th),                         # star
            torch.sin(f * u) > 0,                                    # stripes
            (torch.sin(f * u) > 0) ^ (torch.sin(f * v) > 0),         # checks
            torch.cos(f * u) + torch.cos(f * v) > 1,                 # dots
        ], 1)
        mask = masks[torch.arange(len(masks)), y[i:i + chunk]].unsqueeze(1)
        img = torch.where(mask, fg[i:i + chunk, :, None, None], bg[i:i + chunk, :, None, None])
        images.append(img + sigma[i:i + chunk, None, None, None] * noise[i:i + chunk])
    return (torch.cat(images).clamp(0, 1) * 255).round().to(torch.uint8), y


@functools.lru_cache(maxsize=4)  # shapes is generated: once per process is enough (reproduce.py's tests reload it often)
def shapes_split(split):
    x, y = make_shapes(SHAPES_SIZE[split], seed={"train": 0, "test": 1}[split])
    return x, y, SHAPES_CLASSES


def load_dataset(name, split, data_dir="./data", image_size=32):
    """(images uint8 (N, 3, H, W), labels int64 (N,), class names) of one split, in memory.
    `image_size` applies to folders only, whose images are resized to it (aspect ratio not kept)."""
    if name == "shapes":
        return shapes_split(split)
    if name == "folder":
        return load_folder(Path(data_dir), split, image_size)
    if name not in ("cifar10", "svhn"):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    import torchvision
    root = Path(data_dir)
    try:
        if name == "cifar10":
            ds = _download(torchvision.datasets.CIFAR10, root=root, train=split == "train")
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), ds.classes
        ds = _download(torchvision.datasets.SVHN, root=root, split=split)  # the author uses no "extra" split
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), [str(i) for i in range(10)]
    except ImportError as e:  # torchvision reads SVHN's .mat files with scipy, which is optional here
        raise UserError(f"loading {name} needs the {e.name} package: pip install {e.name}") from None
    except (OSError, RuntimeError, ValueError) as e:
        where = {"cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
                 "svhn": f"{split}_32x32.mat from http://ufldl.stanford.edu/housenumbers/"}[name]
        raise UserError(f"{name} is not in {root.resolve()} and could not be downloaded ({e}); "
                        f"put {where} into that folder, or pass --data-dir") from None


def normalize(images, mean, std):
    """uint8 images -> the normalised input space that teacher, student and generator share."""
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) for v in (mean, std))
    return (images.float() / 255 - mean) / std


# ----------------------------------------------------------------------------------------------
# Models: the pre-activation WideResNet of the author's models/wresnet.py and the generator of
# models/generator.py (the paper, Section 4.1, says only "three convolutional layers").

class Block(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 shortcut conv where the width changes."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # camelCase because the author's published checkpoints use this key.
        self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if c_in != c_out else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return y + (x if self.convShortcut is None else self.convShortcut(o))


def group(n, c_in, c_out, stride):
    """n blocks; held as `.layer` so that state-dict keys read block{g}.layer.{i} as the author's."""
    g = nn.Module()
    g.layer = nn.Sequential(*[Block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)])
    return g


class WideResNet(nn.Module):
    """WRN-depth-k; forward returns (logits, (a1, a2, a3)), the three group outputs used for AT."""

    def __init__(self, depth, widen_factor, num_classes=10):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise UserError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth}")
        n, w = (depth - 4) // 6, [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = (group(n, w[i], w[i + 1], s) for i, s in enumerate((1, 2, 2)))
        self.bn1, self.fc = nn.BatchNorm2d(w[3]), nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        a1 = self.block1.layer(self.conv1(x))
        a2 = self.block2.layer(a1)
        a3 = self.block3.layer(a2)
        return self.fc(F.relu(self.bn1(a3)).mean((2, 3))), (a1, a2, a3)  # the author's 8x8 avg pool at 32x32


ARCH = re.compile(r"wrn-(\d+)-(\d+)")


def wrn(name, num_classes=10):
    """wrn("wrn-40-2") -> WideResNet(40, 2)."""
    m = ARCH.fullmatch(str(name))
    if not m:
        file = Path(str(name)).suffix in (".pt", ".pth", ".tar") or Path(str(name)).is_file()
        raise UserError(f"unknown architecture {name!r}; use wrn-DEPTH-WIDTH, e.g. wrn-16-1 or wrn-40-2" +
                        ("; it looks like a file: pass a teacher's file with --teacher-checkpoint" if file else ""))
    return WideResNet(int(m[1]), int(m[2]), num_classes)


def infer_arch(state_dict):
    """(name, num_classes) of a WideResNet state dict, read off its keys and shapes."""
    try:
        k = state_dict["block1.layer.0.conv1.weight"].shape[0] // 16
        n = len({key.split(".")[2] for key in state_dict if key.startswith("block1.layer.")})
        return f"wrn-{6 * n + 4}-{k}", state_dict["fc.weight"].shape[0]
    except (KeyError, AttributeError, IndexError, TypeError):
        return None, None


class Generator(nn.Module):
    """The author's models/generator.py (HEAD version): z (100) -> 128x8x8 -> 16x16 -> 32x32 -> 3x32x32, no tanh.

    The final BatchNorm puts images in the normalised data space; always used in train mode.
    Other image sizes start from size/4 (shapes: 128x4x4 -> 8x8 -> 16x16).
    """

    def __init__(self, z_dim=100, image_size=32):
        super().__init__()
        self.start = image_size // 4
        self.linear = nn.Linear(z_dim, 128 * self.start ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 3, 3, 1, 1), nn.BatchNorm2d(3))

    def forward(self, z):
        return self.net(self.linear(z).view(-1, 128, self.start, self.start))


# ----------------------------------------------------------------------------------------------
# Losses (Section 3.1, Eq. 1), with the reductions of the author's solver.py: the published numbers use them.

def kl_divergence(student_logits, teacher_logits, temperature=1.0):
    """KL(teacher || student), averaged over batch *and* classes like the author's F.kl_div
    default: beta = 250 was tuned against this scale (it is the per-example KL / C)."""
    log_s = F.log_softmax(student_logits.float() / temperature, 1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, 1)
    return (log_t.exp() * (log_t - log_s)).mean()


def attention_map(a):
    """f(A) = mean over channels of A^2, flattened and L2-normalised per example (Eq. 1)."""
    return F.normalize(a.float().pow(2).mean(1).flatten(1))


def attention_loss(student_acts, teacher_acts):
    """Sum over layers of the *squared* map difference averaged over batch and positions (the author's
    attention_diff; Eq. 1 has the non-squared norm)."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(student_acts, teacher_acts))


def generator_loss(student_logits, teacher_logits, temperature=1.0):
    """L_G = -KL(T || S): the generator looks for images on which the student disagrees."""
    return -kl_divergence(student_logits, teacher_logits, temperature)


def student_loss(student_logits, teacher_logits, student_acts, teacher_acts, beta=250.0, temperature=1.0):
    """L_S = KL(T || S) + beta * sum_l AT_l (Eq. 1)."""
    return kl_divergence(student_logits, teacher_logits, temperature) + beta * attention_loss(student_acts, teacher_acts)


# ----------------------------------------------------------------------------------------------
# Algorithm 1: adversarial belief matching.

@dataclass
class Config:
    """The paper's defaults (Section 4.1) as the author's scripts/ZeroShot/main*.sh set them; PRESETS adapt them."""
    batch_size: int = 128
    z_dim: int = 100
    n_g: int = 1
    n_s: int = 10
    beta: float = 250.0
    lr_student: float = 2e-3
    lr_generator: float = 1e-3  # the author's scripts; the paper says 2e-3
    grad_clip: float = 5.0      # the author's solver.py; not in the paper
    temperature: float = 1.0
    iterations: int = 80_000
    dataset: str = "cifar10"
    teacher: str = "wrn-40-2"
    student: str = "wrn-16-1"
    seed: int = 0
    amp: bool = False
    compile: bool = False
    tensorboard: bool = False
    log_every: int = 1_000
    checkpoint_every: int = 1_000
    mte_images: int = 1_000     # transition curves at the end of a run (Section 4.4): N, K, xi
    mte_steps: int = 100
    mte_step_size: float = 1.0
    mte_targets: str = "label"  # the author's rule, which produced Table 2; "predicted" is the paper's text


PRESETS = {
    "cifar10": dict(iterations=80_000),
    "svhn": dict(iterations=50_000),
    "folder": dict(iterations=80_000),
    # Demo-sized: the README's settings table says why each value differs from the paper's.
    "shapes": dict(teacher="wrn-16-1", student="wrn-16-1", iterations=750, batch_size=64, n_s=20, lr_student=5e-3,
                   lr_generator=2e-3, log_every=50, checkpoint_every=250, mte_images=100, mte_steps=30),
}


def make_config(dataset="cifar10", **overrides):
    """Config with the dataset's preset and then `overrides` applied."""
    if dataset not in PRESETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return Config(**{"dataset": dataset, **PRESETS[dataset], **overrides})


def autocast(device, enabled):
    """bf16 autocast for the networks' forward passes; the losses cast back to fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def generator_step(teacher, student, generator, z, opt_generator, cfg):
    """Algorithm 1, generator update: one Adam step on L_G = -KL(T(x_p) || S(x_p)), x_p = G(z).
    autograd.grad asks for the generator's gradients only, so no weight gradient of the teacher or
    the student is computed (the author's backward() computes both and discards them)."""
    params = list(generator.parameters())
    with autocast(z.device, cfg.amp):
        x = generator(z)
        loss = generator_loss(student(x)[0], teacher(x)[0], cfg.temperature)
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.grad = g
    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt_generator.step()
    return loss.detach()


def student_step(student, x, t_logits, t_acts, opt_student, cfg):
    """Algorithm 1, student update: one Adam step on L_S = KL(T(x_p) || S(x_p)) + beta * AT (Eq. 1)."""
    with autocast(x.device, cfg.amp):
        s_logits, s_acts = student(x)
        loss = student_loss(s_logits, t_logits, s_acts, t_acts, cfg.beta, cfg.temperature)
    opt_student.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    opt_student.step()
    return loss.detach(), s_logits.detach()


def zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """One outer iteration of Algorithm 1: n_g generator steps, then n_s student steps on the pseudo
    batch of the updated generator, whose teacher outputs are computed once (the author re-runs the
    generator with autograd in every student step: the same maths at a higher cost). Returns device
    tensors, so nothing waits for the device: the last losses, the teacher's and student's mean
    tensors, so nothing waits for the device: the last losses, and the teacher's and the student's
    class probabilities on the pseudo batch (the author logs statistics of both)."""
    device = next(student.parameters()).device
    z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
    loss_g = loss_s = torch.full((), float("nan"), device=device)  # nan when n_g or n_s is 0
    for _ in range(cfg.n_g):
        loss_g = generator_step(teacher, student, generator, z, opt_generator, cfg)
    with torch.no_grad(), autocast(device, cfg.amp):
        x = generator(z)  # the pseudo batch, fixed for the n_s steps
        t_logits, t_acts = teacher(x)
    s_logits = torch.full_like(t_logits, float("nan"))
    for _ in range(cfg.n_s):
        loss_s, s_logits = student_step(student, x, t_logits, t_acts, opt_student, cfg)
    return {"loss_generator": loss_g, "loss_student": loss_s,
            "teacher_probs": t_logits.float().softmax(1), "student_probs": s_logits.float().softmax(1)}


# ----------------------------------------------------------------------------------------------
# Evaluation: test accuracy, transition curves and Mean Transition Error (Section 4.4, Algorithm 2).


@torch.no_grad()
def predict(model, images, mean, std, batch_size=500):
    """Predicted classes of uint8 `images`, in eval mode, on the model's device."""
    device = next(model.parameters()).device
    with eval_mode(model):
        return torch.cat([model(normalize(images[i:i + batch_size].to(device), mean, std))[0].argmax(1).cpu()
                          for i in range(0, len(images), batch_size)])


def accuracy(model, images, labels, mean, std):
    return (predict(model, images, mean, std) == labels).float().mean().item()


@torch.no_grad()
def agreeing_images(a, b, images, labels, mean, std, n, seed=0, batch_size=500):
    """The first n test images, after a seeded shuffle, on which networks a and b predict the same
    class (right or wrong, as in the author's code). Returns (normalised x, labels, shared class).
    Stops predicting once it has n: N = 1,000 of 10,000 test images reads a few batches, not all 20."""
    found, shared = [], []
    for idx in torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).split(batch_size):
        pa, pb = predict(a, images[idx], mean, std), predict(b, images[idx], mean, std)
        found.append(idx[pa == pb])
        shared.append(pa[pa == pb])
        if sum(map(len, found)) >= n:
            break
    keep = torch.cat(found)[:n]
    return normalize(images[keep], mean, std), labels[keep], torch.cat(shared)[:n]


CHUNK = 512  # trajectories per batch in transition_curves


def transition_curves(stepped, observed, x, steps=100, step_size=1.0, labels=None, chunk_size=CHUNK, progress=None):
    """Algorithm 2: push each image towards every other class j by gradient descent on the stepped
    network's cross-entropy, recording p_j of both networks before each update (step 0 = clean x).

    x must be images on which both networks agree. Targets exclude the shared predicted class
    (the paper) or, if `labels` is given, the true label (the author's code); for reference
    class i, row c targets j = (i + c + 1) mod C. All N * (C - 1) trajectories run as batches;
    eval-mode BatchNorm and a per-example *summed* cross-entropy make each one take exactly the
    step of the one-image algorithm. Returns (p_stepped, p_observed), each (N, C - 1, steps);
    `progress.update()` is called after every step of every chunk.
    """
    device, C = next(stepped.parameters()).device, stepped.fc.out_features
    x = x.to(device)
    with eval_mode(stepped), eval_mode(observed):
        with torch.no_grad():
            ref = stepped(x)[0].argmax(1) if labels is None else labels.to(device)
        targets = (ref[:, None] + torch.arange(1, C, device=device)) % C  # (N, C-1)
        xs, ts = x.repeat_interleave(C - 1, 0), targets.flatten()
        curves = torch.empty(2, len(ts), steps, device=device)  # on the device: one copy at the end, no sync per step
        for i in range(0, len(ts), chunk_size):
            xk, tk = xs[i:i + chunk_size].clone(), ts[i:i + chunk_size]
            for k in range(steps):
                xk.requires_grad_(True)
                logits = stepped(xk)[0]
                with torch.no_grad():
                    curves[0, i:i + len(tk), k] = logits.float().softmax(1).gather(1, tk[:, None])[:, 0]
                    curves[1, i:i + len(tk), k] = observed(xk)[0].float().softmax(1).gather(1, tk[:, None])[:, 0]
                if k < steps - 1:  # the last update would never be recorded
                    # grad w.r.t. the images only: no weight gradient is computed, the networks stay frozen
                    grad, = torch.autograd.grad(F.cross_entropy(logits, tk, reduction="sum"), xk)
                    xk = (xk - step_size * grad).detach()
                if progress is not None:
                    progress.update()
    return curves.cpu().view(2, len(x), C - 1, steps).unbind(0)


def mean_transition_error(p_stepped, p_observed):
    """MTE: mean over images, targets and steps of |p_j^stepped - p_j^observed| (Section 4.4)."""
    return (torch.as_tensor(p_stepped) - torch.as_tensor(p_observed)).abs().mean().item()


# ----------------------------------------------------------------------------------------------
# Checkpoints and run directories. Files hold tensors and plain Python types only, so every load
# can be weights_only=True.


def model_checkpoint(model, arch, dataset, mean, std, image_size=None, **meta):
    """The author's format (a dict with 'state_dict') plus plain metadata."""
    return {"state_dict": model.state_dict(), "arch": arch, "num_classes": model.fc.out_features, "dataset": dataset,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std], "image_size": image_size, **meta}


def load_model(path, arch=None, num_classes=None):
    """A WideResNet from a checkpoint: ours, the author's teachers and KD+AT students ('state_dict')
    or the author's zero-shot students ('student_state_dict'). Returns (model, metadata); the
    architecture is read off the weights, and a mismatch with `arch` / `num_classes` is refused."""
    ckpt = load_checkpoint(path)
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    state = ckpt.get("state_dict", ckpt.get("student_state_dict", ckpt))
    if isinstance(state, dict):  # checkpoints saved from nn.DataParallel prefix every key
        state = {k.removeprefix("module."): v for k, v in state.items()}
    found, classes = infer_arch(state) if isinstance(state, dict) else (None, None)
    if found is None:
        for key, name in (("model", "model.pt"), ("student", "student.pt")):  # train_teacher.py / zskt.py runs
            if key in ckpt and "rng" in ckpt:
                raise UserError(f"{path} is a run's checkpoint for --resume; the trained model is in "
                                f"{Path(path).with_name(name)} next to it")
        raise UserError(f"{path} does not hold a WideResNet state dict")
    if (arch and arch != found) or (num_classes and num_classes != classes):
        raise UserError(f"{path} holds a {found} with {classes} classes, but a {arch or found} with "
                        f"{num_classes or classes} classes was expected; pass the matching architecture or file")
    model = wrn(found, classes)
    model.load_state_dict(state)
    meta = {k: v for k, v in ckpt.items() if not k.endswith("state_dict")} if state is not ckpt else {}
    if isinstance(meta.get("args"), argparse.Namespace) and "dataset" not in meta:  # the author's 'CIFAR10', 'SVHN'
        meta["dataset"] = str(getattr(meta["args"], "dataset", "")).lower() or None
    return model, meta


# ----------------------------------------------------------------------------------------------
# A training run: Algorithm 1 with logging, checkpoints, resume and the final MTE.

class Run(NamedTuple):
    student: nn.Module
    generator: nn.Module
    summary: dict


def train_zero_shot(cfg, teacher, test_images, test_labels, mean, std, out, device=None, resume=False,
                    overwrite=False, classes=None, teacher_checkpoint=None, data_dir="./data", log=print,
                    resume_command=None):
    """Trains a student from `teacher` without data. Writes the run directory `out`: config.json,
    metrics.csv, samples_*.png, checkpoint.pt (every cfg.checkpoint_every iterations and on Ctrl-C),
    then student.pt, curves.npz, transition.png and summary.json. An existing directory is refused
    unless `resume` (continue from its checkpoint) or `overwrite`. config.json names the teacher file
    (a copy, teacher.pt, when the teacher came from Python), so `python zskt.py --out OUT --resume`
    continues any run. Returns Run(student, generator, summary)."""
    device, out = resolve_device(device), Path(out)
    validate(cfg)
    resume_command = resume_command or command("zskt.py", "--out", out.resolve(), "--resume")
    with run_lock(out):
        prepare_run_dir(out, overwrite=overwrite) if not resume else None
        with tee(out / "log.txt"):  # the console, also in the run directory
            state = load_checkpoint(out / "checkpoint.pt") if resume and (out / "checkpoint.pt").is_file() else None
            if resume and state is None:
                log(f"{out} holds no checkpoint yet, so this run starts from iteration 0")
            if not (out / "config.json").is_file():
                if teacher_checkpoint is None:
                    teacher_checkpoint = out / "teacher.pt"
                    save_atomic(model_checkpoint(teacher, infer_arch(teacher.state_dict())[0], cfg.dataset, mean,
                                                 std, test_images.shape[-1]), teacher_checkpoint)
                write_json(out / "config.json", run_record(cfg, [cfg.seed], teacher_checkpoint, data_dir,
                                                           test_images.shape[-1]))
            # From here on a first Ctrl-C or SIGTERM saves a checkpoint and stops cleanly.
            with StopOnSignal(f"the last checkpoint, {out / 'checkpoint.pt'} (iteration {state['iteration']}), stays"
                              if state else "no checkpoint had been written yet") as stop:
                return _train(cfg, teacher, test_images, test_labels, mean, std, out, device, state, classes, log,
                              resume_command, stop)


def _train(cfg, teacher, test_images, test_labels, mean, std, out, device, state, classes, log, resume_command, stop):
    cl, C = torch.channels_last, teacher.fc.out_features  # channels_last: ~1.3x faster convolutions on CPU too
    names = list(classes or map(str, range(C)))
    seed_everything(cfg.seed)
    teacher = teacher.to(device, memory_format=cl).eval().requires_grad_(False)
    student = wrn(cfg.student, C).to(device, memory_format=cl)
    generator = Generator(cfg.z_dim, test_images.shape[-1]).to(device, memory_format=cl)  # train mode throughout
    opt_s = torch.optim.Adam(student.parameters(), cfg.lr_student)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_generator)
    # One cosine step per outer iteration, to 0 at the end, as the author's solver.py.
    sched_s, sched_g = (torch.optim.lr_scheduler.CosineAnnealingLR(o, cfg.iterations) for o in (opt_s, opt_g))
    parts = {"student": student, "generator": generator, "opt_student": opt_s, "opt_generator": opt_g,
             "sched_student": sched_s, "sched_generator": sched_g}
    start, seconds, sums, count, last = 0, 0.0, {}, 0, {}
    if state is not None:
        for k, v in parts.items():
            v.load_state_dict(state[k])
        start, seconds, count = state["iteration"], state["seconds"], state.get("count", 0)
        sums, last = ({k: v.to(device) for k, v in state.get(d, {}).items()} for d in ("sums", "last"))
        set_rng_state(state["rng"])
    networks = [torch.compile(m) if cfg.compile else m for m in (teacher, student, generator)]  # same parameters
    t_pred = predict(teacher, test_images, mean, std)
    teacher_acc = (t_pred == test_labels).float().mean().item()
    z_grid = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    metrics = out / "metrics.csv"
    rows = [r for r in csv.DictReader(metrics.open()) if int(r["iteration"]) <= start] if metrics.exists() else []
    board = tensorboard_writer(out) if cfg.tensorboard else None

    def checkpoint(iteration):
        save_atomic({"iteration": iteration, "seconds": time.time() - t0, "config": dataclasses.asdict(cfg),
                     "rng": rng_state(), "sums": sums, "count": count, "last": last,
                     **{k: v.state_dict() for k, v in parts.items()}}, out / "checkpoint.pt")
        stop.saved = f"the last checkpoint, {out / 'checkpoint.pt'} (iteration {iteration}), stays"

    log(f"teacher {cfg.teacher}: {teacher_acc:.2%} test accuracy | student {cfg.student} | "
        f"{cfg.iterations} iterations from {start} on {device} | run directory {out}")
    mte_eta = transition_seconds(student, teacher, test_images, mean, std, cfg)
    t0 = time.time() - seconds
    bar = Progress(cfg.iterations, "Algorithm 1", initial=start, extra=mte_eta)
    for it in range(start + 1, cfg.iterations + 1):
        last = zero_shot_iteration(*networks, opt_s, opt_g, cfg)
        sums, count = {k: sums.get(k, 0) + v for k, v in iteration_stats(last).items()}, count + 1  # no sync
        sched_s.step(), sched_g.step()
        bar.update()
        log_now = it % cfg.log_every == 0 or it == cfg.iterations
        save_now = it % cfg.checkpoint_every == 0 or it == cfg.iterations or stop.signal
        if not (log_now or save_now):
            continue
        means = {k: v / count for k, v in sums.items()}
        bad = [k for k in ("loss_generator", "loss_student") if not torch.isfinite(means[k])]
        if bad:  # checked before the checkpoint is written, so the last good one stays
            raise UserError(f"{' and '.join(bad)} became nan or inf in iterations {it - count + 1}-{it}; "
                            f"{stop.saved.replace('stays', 'is intact')} (a new --out with lower learning rates, or "
                            f"without --amp, may avoid it)")
        if log_now:
            s_pred = predict(student, test_images, mean, std)
            hist = (means.pop("teacher_classes") / cfg.batch_size).tolist()
            rows.append({"iteration": it, **{k: v.item() for k, v in means.items()},
                         "student_test_acc": (s_pred == test_labels).float().mean().item(),
                         "agreement": (s_pred == t_pred).float().mean().item(),
                         "lr_student": sched_s.get_last_lr()[0], "lr_generator": sched_g.get_last_lr()[0],
                         **{f"teacher_class_{c}": h for c, h in enumerate(hist)}, "seconds": time.time() - t0})
            write_csv(metrics, rows)
            grid = save_samples(generator, teacher, z_grid, mean, std, names, out / f"samples_{it:06d}.png")
            plot_training(rows, out / "training.png")
            if board:
                log_tensorboard(board, rows[-1], grid, last, it)
            bar.note(f"student {rows[-1]['student_test_acc']:.2%} (agrees with teacher {rows[-1]['agreement']:.2%})"
                     f" | loss_S {rows[-1]['loss_student']:.4f} | loss_G {rows[-1]['loss_generator']:.4f}")
            sums, count = {}, 0
        if save_now:
            checkpoint(it)
        if stop.signal:
            bar.close()
            raise Stopped(f"{stop.signal} after iteration {it}; checkpoint saved; continue with: {resume_command}",
                          stop.signum)
    bar.close()
    if stop.signal:  # it came after the last iteration (or the run was resumed at its end)
        raise Stopped(f"{stop.signal} before the final evaluation; continue with: {resume_command}", stop.signum)
    stop.at_once = f"during the final evaluation, after the last checkpoint; continue with: {resume_command}"
    s_pred = predict(student, test_images, mean, std)
    student_acc = (s_pred == test_labels).float().mean().item()
    save_atomic(model_checkpoint(student, cfg.student, cfg.dataset, mean, std, test_images.shape[-1],
                                 test_acc=student_acc, seed=cfg.seed, iterations=cfg.iterations), out / "student.pt")
    mte = transition_report(student, teacher, test_images, test_labels, mean, std, cfg, out)[0]
    per_class = lambda pred: [(pred[test_labels == c] == c).float().mean().item() for c in range(C)]
    summary = {"dataset": cfg.dataset, "teacher": cfg.teacher, "student": cfg.student, "iterations": cfg.iterations,
               "seed": cfg.seed, "device": device, "device_name": device_name(device), "teacher_test_acc": teacher_acc,
               "student_test_acc": student_acc, "student_teacher_ratio": student_acc / max(teacher_acc, 1e-12),
               "mte": mte, "seconds": time.time() - t0, "classes": names,
               "teacher_per_class_acc": per_class(t_pred), "student_per_class_acc": per_class(s_pred),
               "teacher_classes_last_pseudo_batch": last["teacher_probs"].argmax(1).bincount(minlength=C).tolist()
               if last else None, "config": dataclasses.asdict(cfg)}
    write_json(out / "summary.json", summary)
    if board:
        board.close()
    return Run(student, generator, summary)


def iteration_stats(out):
    """What the run logs of one iteration, on the device: both losses, the teacher's and student's
    mean top-class probability on the pseudo batch, and the teacher's class counts."""
    t, s = out["teacher_probs"], out["student_probs"]
    return {"loss_generator": out["loss_generator"], "loss_student": out["loss_student"],
            "teacher_confidence": t.amax(1).mean(), "student_confidence": s.amax(1).mean(),
            "teacher_classes": F.one_hot(t.argmax(1), t.shape[1]).sum(0).float()}  # bincount would sync on CUDA


def transition_seconds(stepped, observed, images, mean, std, cfg):
    """An estimate of the final transition curves' time, for the ETA: one real step on one chunk, timed."""
    if cfg.mte_images == 0:
        return 0.0
    targets = stepped.fc.out_features - 1
    x = normalize(images[:min(cfg.mte_images, max(1, CHUNK // targets))], mean, std)  # at most one chunk
    t = time.time()
    transition_curves(stepped, observed, x, steps=2)
    return (time.time() - t) / 2 * cfg.mte_steps * math.ceil(cfg.mte_images * targets / CHUNK)


def transition_report(stepped, observed, images, labels, mean, std, cfg, out, title="student"):
    """Transition curves on cfg.mte_images agreeing test images -> curves.npz, transition.png; MTE."""
    x, y, _ = agreeing_images(stepped, observed, images, labels, mean, std, cfg.mte_images)
    if len(x) == 0:
        print("no test image on which both networks agree, so no transition curves (MTE = nan)")
        return float("nan"), None, None
    bar = Progress(math.ceil(len(x) * (stepped.fc.out_features - 1) / CHUNK) * cfg.mte_steps, f"transition curves "
                   f"({title})", unit="step")
    p_s, p_o = transition_curves(stepped, observed, x, cfg.mte_steps, cfg.mte_step_size,
                                 labels=y if cfg.mte_targets == "label" else None, progress=bar)
    bar.close()
    np.savez_compressed(out / "curves.npz", p_stepped=p_s.numpy(), p_observed=p_o.numpy(), labels=y.numpy())
    plot_transition_curves([(title, p_s, p_o)], out / "transition.png")
    return mean_transition_error(p_s, p_o), p_s, p_o


# ----------------------------------------------------------------------------------------------
# Command line.

def validate(cfg):
    """Bad values are refused before any compute is spent."""
    at_least = dict(iterations=1, batch_size=2, n_g=1, n_s=1, z_dim=1, log_every=1, checkpoint_every=1, mte_steps=1,
                    beta=0, mte_images=0)
    for name, low in at_least.items():
        if not getattr(cfg, name) >= low or (name == "beta" and not math.isfinite(cfg.beta)):
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(cfg, name)}"
                            + (" (BatchNorm needs two examples)" if name == "batch_size" else ""))
    for name in ("lr_student", "lr_generator", "grad_clip", "temperature", "mte_step_size"):
        if not 0 < getattr(cfg, name) < math.inf:
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, not {getattr(cfg, name)}")
    if cfg.mte_targets not in ("label", "predicted"):
        raise UserError(f"--mte-targets must be 'label' (the author's code) or 'predicted' (the paper's text), "
                        f"not {cfg.mte_targets!r}")
    wrn(cfg.teacher), wrn(cfg.student)  # raise on unknown names
    return cfg


def parse_args(argv):
    """(args, the Config fields given on the command line). --help shows the defaults of the dataset
    named by --dataset (shapes when none is)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    dataset = pre.parse_known_args(argv)[0].dataset
    defaults = make_config(dataset if dataset in PRESETS else "shapes")
    p = argparse.ArgumentParser(description="Zero-shot knowledge transfer (Micaelli & Storkey, NeurIPS 2019): "
                                "train a student to match a teacher without any data. `python zskt.py curves -h`: "
                                "transition curves of saved networks.")
    p.add_argument("--dataset", choices=DATASETS, help="shapes: the built-in offline dataset (default); cifar10, "
                   "svhn: downloaded to --data-dir; folder: your images in --data-dir/{train,test}/<class>/")
    for f in dataclasses.fields(Config):
        if f.name == "dataset":
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = f"{CONFIG_HELP[f.name]} (default for {defaults.dataset}: {default})"
        if f.type is bool:
            p.add_argument(flag, action="store_const", const=True, help=text)
        else:
            p.add_argument(flag, type=f.type, help=text, choices=("label", "predicted") if f.name == "mte_targets" else None)
    p.add_argument("--seeds", type=int, nargs="+", help="several runs one after another, seed<k>/ each, and "
                   "aggregate.json with the mean and population std over seeds (instead of --seed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--data-dir", help="where the datasets are, or are downloaded to (default ./data)")
    p.add_argument("--teacher-checkpoint", help="the teacher's file, ours or the author's (default: where "
                   "train_teacher.py saves it, checkpoints/<dataset>-<arch>.pt)")
    p.add_argument("--image-size", type=int, help="--dataset folder: the size images are resized to (default: "
                   "the teacher's; 32 for the author's; the aspect ratio is not kept)")
    p.add_argument("--allow-dataset-mismatch", action="store_true",
                   help="use a teacher whose file says it was trained on another dataset or image size")
    p.add_argument("--out", help="run directory (default runs/<dataset>-<teacher>-<student>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--start-or-resume", action="store_true", help="resume the run in --out if it has one, else start "
                   "it (for schedulers that may run a command twice)")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    args = p.parse_args(argv)
    return args, {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}


def run_config(saved):
    """The Config of a saved run; fields of other versions are left out, new ones take their defaults."""
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in saved["config"].items() if k in fields})


def run_record(cfg, seeds, teacher_path, data_dir, image_size):
    """config.json: what --resume needs, with absolute paths so that any working directory will do."""
    return {"config": dataclasses.asdict(cfg), "seeds": seeds, "teacher_checkpoint": str(Path(teacher_path).resolve()),
            "data_dir": str(Path(data_dir).resolve()), "image_size": image_size}


def check_folder_flags(dataset, data_dir, image_size):
    """--data-dir and --image-size for folder datasets (both scripts)."""
    if dataset == "folder" and data_dir is None:
        raise UserError("--dataset folder needs --data-dir DIR, a folder with DIR/train/<class>/* and "
                        "DIR/test/<class>/* images")
    if image_size is not None and (dataset != "folder" or image_size < 8 or image_size % 4):
        raise UserError(f"--image-size applies to --dataset folder only, and must be a multiple of 4 of at least 8 "
                        f"(the generator upsamples twice by 2), not {image_size}")


def normalisation(meta, dataset, path):
    """The mean and std a network was trained with: from its file, else the dataset's constants."""
    if "mean" in meta:
        return meta["mean"], meta["std"]
    if dataset not in MEAN_STD:
        raise UserError(f"{path} stores no normalisation constants; re-train it with train_teacher.py")
    return MEAN_STD[dataset]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["curves"]:
        return curves_main(argv[1:])
    args, given = parse_args(argv)
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fastest kernels, at the price of bit-exact reruns
    if args.start_or_resume:  # a scheduler may run one command twice: then it continues the first run
        args.resume = args.out is not None and (Path(args.out) / "config.json").is_file()
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out, the run directory to continue")
        saved = read_run(args.out)
        paths = {"teacher_checkpoint": args.teacher_checkpoint, "data_dir": args.data_dir}
        diff = [f"{k}={saved['config'].get(k)!r} (saved) vs {v!r} (given)" for k, v in given.items()
                if saved["config"].get(k) != v]
        diff += [f"{k}={saved.get(k)} (saved) vs {Path(v).resolve()} (given)" for k, v in paths.items()
                 if v is not None and Path(v).resolve() != Path(saved.get(k) or "./data").resolve()]
        diff += [f"{k}={saved.get(k)} (saved) vs {v} (given)" for k, v in (("seeds", args.seeds),
                 ("image_size", args.image_size)) if v not in (None, saved.get(k))]
        if diff:
            raise UserError(f"--resume: the flags contradict the saved run: {'; '.join(diff)}; "
                            f"drop those flags or start a new --out")
        cfg, seeds, size = run_config(saved), saved.get("seeds") or [saved["config"]["seed"]], saved.get("image_size")
        teacher_path, data_dir = Path(saved["teacher_checkpoint"]), Path(saved.get("data_dir") or "./data").resolve()
        if not teacher_path.is_file():
            raise UserError(f"the run's teacher file {teacher_path} is gone; put it back, or start a new --out")
    else:
        if args.seeds and "seed" in given:
            raise UserError("--seed and --seeds contradict each other; pass one of them")
        if args.seeds and len(set(args.seeds)) < len(args.seeds):
            raise UserError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each seed once")
        cfg = validate(make_config(**{"dataset": "shapes", **given}))
        check_folder_flags(cfg.dataset, args.data_dir, args.image_size)
        seeds, data_dir, size = args.seeds or [cfg.seed], Path(args.data_dir or "./data").resolve(), args.image_size
        teacher_path = Path(args.teacher_checkpoint or default_teacher_path(cfg.dataset, cfg.teacher, data_dir)).resolve()
        if args.teacher_checkpoint and not teacher_path.is_file():
            raise UserError(f"--teacher-checkpoint: no file at {teacher_path}")
        if not teacher_path.is_file():  # where train_teacher.py saves it, relative to this directory: cd there first
            train = command("train_teacher.py", "--dataset", cfg.dataset, "--arch", cfg.teacher,
                            *(["--data-dir", data_dir] if cfg.dataset == "folder" else []),
                            *(["--image-size", size] if size else []))
            raise UserError(f"no teacher checkpoint at {teacher_path}; train one with: cd {shlex.quote(str(Path.cwd()))} "
                            f"&& {train}, or pass --teacher-checkpoint")
    teacher, meta = load_model(teacher_path, given.get("teacher"))  # the architecture comes from the file
    test_images, test_labels, classes = load_dataset(cfg.dataset, "test", data_dir, size or meta.get("image_size") or 32)
    if teacher.fc.out_features != len(classes):
        raise UserError(f"{teacher_path} holds a {infer_arch(teacher.state_dict())[0]} with {teacher.fc.out_features} "
                        f"classes, but a network with {len(classes)} classes was expected ({cfg.dataset}); pass the "
                        f"matching file")
    check_teacher(meta, cfg.dataset, test_images.shape[-1], teacher_path, args.allow_dataset_mismatch or args.resume)
    cfg.teacher, (mean, std) = infer_arch(teacher.state_dict())[0], normalisation(meta, cfg.dataset, teacher_path)
    out = Path(args.out or f"runs/{cfg.dataset}-{cfg.teacher}-{cfg.student}-{time.strftime('%Y%m%d-%H%M%S')}")
    hint = command("zskt.py", "--out", out.resolve(), "--resume")

    def run(seed, run_dir, resume):
        if resume and (run_dir / "summary.json").is_file():  # finished earlier: nothing to redo
            print(f"{run_dir} finished earlier")
            return json.loads((run_dir / "summary.json").read_text())
        return train_zero_shot(dataclasses.replace(cfg, seed=seed), teacher, test_images, test_labels, mean, std,
                               run_dir, device, resume, args.overwrite, classes, teacher_path, data_dir,
                               resume_command=hint).summary

    if len(seeds) == 1:
        summary = run(seeds[0], out, args.resume)
        with tee(out / "log.txt"):
            return report([summary], out)
    with run_lock(out):
        if not args.resume:
            prepare_run_dir(out, overwrite=args.overwrite)
            write_json(out / "config.json", run_record(cfg, seeds, teacher_path, data_dir, test_images.shape[-1]))
        with tee(out / "log.txt"):
            summaries = []
            for i, seed in enumerate(seeds, 1):
                print(f"== seed {seed} ({i} of {len(seeds)}): {out / f'seed{seed}'}")
                summaries.append(run(seed, out / f"seed{seed}", (out / f"seed{seed}").exists()))
            write_json(out / "aggregate.json", {"seeds": seeds, **{k: mean_std([s[k] for s in summaries]) for k in (
                "teacher_test_acc", "student_test_acc", "student_teacher_ratio", "mte")}})
            report(summaries, out)


def curves_main(argv):
    p = argparse.ArgumentParser(prog="zskt.py curves", description="Transition curves and MTE (Algorithm 2, "
                                "Section 4.4; Figure 4, Table 2) of saved networks that are stepped on (e.g. a "
                                "zero-shot and a KD+AT student) against a teacher that is only observed.")
    p.add_argument("--teacher-checkpoint", required=True, help="the teacher's file (observed)")
    p.add_argument("--student-checkpoint", required=True, nargs="+", help="the files of the networks stepped on")
    p.add_argument("--names", nargs="+", help="panel titles and folder names, one per --student-checkpoint "
                   "(default: the file names)")
    p.add_argument("--dataset", choices=DATASETS, help="default: the dataset the teacher's file names")
    p.add_argument("--data-dir", default="./data", help="where the datasets are (default ./data)")
    p.add_argument("--images", type=int, default=1000, help="test images both networks agree on (N; paper: 1000)")
    p.add_argument("--steps", type=int, default=100, help="gradient steps per curve (K; paper: 100)")
    p.add_argument("--step-size", type=float, default=1.0, help="step size (xi; paper: 1)")
    p.add_argument("--mte-targets", choices=("label", "predicted"), default="label", help=CONFIG_HELP["mte_targets"])
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--out", help="directory for transition.png, mte.json and one folder of curves per network "
                   "(default runs/curves-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds first")
    args = p.parse_args(argv)
    for flag, value in (("--images", args.images), ("--steps", args.steps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}")
    if not 0 < args.step_size < math.inf:
        raise UserError(f"--step-size must be a positive number, not {args.step_size}")
    names = args.names or panel_names(args.student_checkpoint)
    if len(names) != len(args.student_checkpoint):
        raise UserError(f"--names gives {len(names)} names for {len(args.student_checkpoint)} --student-checkpoint "
                        f"files; give one name per file")
    bad = [n for n in names if not re.fullmatch(r"[\w+-][\w.+-]*", n)] or sorted({n for n in names if names.count(n) > 1})
    if bad:
        raise UserError(f"--names {' '.join(bad)}: each name becomes a folder, so use distinct names of letters, "
                        f"digits and . _ + -")
    device = resolve_device(args.device)
    teacher, meta = load_model(args.teacher_checkpoint)
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise UserError(f"{args.teacher_checkpoint} does not say which dataset it was trained on; pass --dataset")
    images, labels, _ = load_dataset(dataset, "test", args.data_dir, meta.get("image_size") or 32)
    mean, std = normalisation(meta, dataset, args.teacher_checkpoint)
    check_teacher(meta, dataset, images.shape[-1], args.teacher_checkpoint, False)  # every network, for this data
    students = []
    for path in args.student_checkpoint:
        student, s_meta = load_model(path, num_classes=teacher.fc.out_features)
        check_teacher(s_meta, dataset, images.shape[-1], path, False)
        students.append(student.to(device))
    cfg = dataclasses.replace(Config(), mte_images=args.images, mte_steps=args.steps, mte_step_size=args.step_size,
                              mte_targets=args.mte_targets)
    out, t0 = Path(args.out or f"runs/curves-{time.strftime('%Y%m%d-%H%M%S')}"), time.time()
    with run_lock(out):
        prepare_run_dir(out, overwrite=args.overwrite, hint="")
        panels, result = [], {}
        for student, path, name in zip(students, args.student_checkpoint, names):
            (out / name).mkdir()
            result[name], p_s, p_o = transition_report(student, teacher.to(device), images, labels, mean, std, cfg,
                                                       out / name, name)
            panels += [(name, p_s, p_o)] if p_s is not None else []
            print(f"{name}: MTE {result[name]:.4f} against {args.teacher_checkpoint} "
                  f"(N={args.images}, K={args.steps}, xi={args.step_size}, targets: {args.mte_targets})")
        if panels:
            plot_transition_curves(panels, out / "transition.png")
        write_json(out / "mte.json", {**vars(args), "mte": result, "dataset": dataset, "seconds": time.time() - t0,
                                      "device_name": device_name(device),
                                      "files": dict(zip(names, map(str, args.student_checkpoint)))})
    print(f"written to {out}/: " + ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))


if __name__ == "__main__":
    run_cli(main)
