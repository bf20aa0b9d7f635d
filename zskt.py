"""Zero-shot Knowledge Transfer via Adversarial Belief Matching (Micaelli & Storkey, NeurIPS 2019).

One file, in the paper's order: data -> models -> losses -> Algorithm 1 -> evaluation
(accuracy, transition curves, MTE) -> checkpoints -> CLI. Section numbers (§) refer to
shared/PAPER.md; "the author's code" is github.com/polo5/ZeroShotKnowledgeTransfer.

    python zskt.py                                    # offline demo on the built-in `shapes` data
    python zskt.py --dataset cifar10 --teacher wrn-40-2 --student wrn-16-1
    python zskt.py curves --teacher T.pt --student S.pt --dataset cifar10
"""
import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class UserError(Exception):
    """A problem with the user's input: printed as one sentence, exit status 2, no traceback."""


# ----------------------------------------------------------------------------------------------
# Data (§1.7). Every dataset is held in memory as uint8 images (N, 3, H, W) and int64 labels:
# 32x32 for CIFAR-10, SVHN and folders, 16x16 for shapes.

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


def load_dataset(name, split, data_dir="./data"):
    """(images uint8 (N, 3, H, W), labels int64 (N,), class names) of one split, in memory."""
    if name == "shapes":
        x, y = make_shapes(SHAPES_SIZE[split], seed={"train": 0, "test": 1}[split])
        return x, y, SHAPES_CLASSES
    if name == "folder":
        return load_folder(Path(data_dir), split)
    if name not in ("cifar10", "svhn"):
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    import torchvision
    root = Path(data_dir)
    try:
        if name == "cifar10":
            ds = _download(torchvision.datasets.CIFAR10, root=root, train=split == "train")
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), ds.classes
        ds = _download(torchvision.datasets.SVHN, root=root, split=split)  # train split only (§1.7)
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), [str(i) for i in range(10)]
    except (OSError, RuntimeError, ValueError) as e:
        where = {"cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
                 "svhn": f"{split}_32x32.mat from http://ufldl.stanford.edu/housenumbers/"}[name]
        raise UserError(f"{name} is not in {root.resolve()} and could not be downloaded ({e}); "
                        f"put {where} into that folder, or pass --data-dir") from None


def _download(cls, **kwargs):
    try:  # files already on disk: no network needed
        return cls(download=False, **kwargs)
    except RuntimeError:
        return cls(download=True, **kwargs)


def load_folder(root, split):
    """DIR/{train,test}/<class>/* as 32x32 RGB; class indices come from the train folder names."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.transforms.functional import pil_to_tensor
    names = root / "train" if (root / "train").is_dir() else root / split
    classes = sorted(d.name for d in names.iterdir() if d.is_dir()) if names.is_dir() else []
    if not (root / split).is_dir() or not classes:
        raise UserError(f"--dataset folder needs images in {root / split}/<class>/*; "
                        f"pass --data-dir pointing at a folder with train/ and test/ inside")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / split / cls).glob("*")) if (root / split / cls).is_dir() else []:
            if f.suffix.lower() in IMG_EXTENSIONS:
                with Image.open(f) as im:
                    images.append(pil_to_tensor(im.convert("RGB").resize((32, 32), Image.BILINEAR)))
                labels.append(label)
    if not images:
        raise UserError(f"no image files found under {root / split}")
    return torch.stack(images), torch.tensor(labels), classes


def normalize(images, mean, std):
    """uint8 images -> the normalised input space that teacher, student and generator share."""
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=images.device).view(1, -1, 1, 1) for v in (mean, std))
    return (images.float() / 255 - mean) / std


def denormalize(x, mean, std):
    mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return (x.float() * std + mean).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Models: the pre-activation WideResNet (§1.6) and the generator (§1.4).

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
        raise UserError(f"unknown architecture {name!r}; use wrn-DEPTH-WIDTH, e.g. wrn-16-1 or wrn-40-2")
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
    """§1.4, the author's HEAD version: z (100) -> 128x8x8 -> 16x16 -> 32x32 -> 3x32x32, no tanh.

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
# Losses (§1.2, with the author's reductions from §4.1-4.2: the published numbers use them).

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
    """Sum over layers of the *squared* map difference averaged over batch and positions (§4.2)."""
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
    """Paper / author-code defaults (§1.5); PRESETS below adapt them per dataset."""
    batch_size: int = 128
    z_dim: int = 100
    n_g: int = 1
    n_s: int = 10
    beta: float = 250.0
    lr_student: float = 2e-3
    lr_generator: float = 1e-3  # the author's code; the paper says 2e-3 (§4.3)
    grad_clip: float = 5.0      # the author's code; not in the paper (§4.4)
    temperature: float = 1.0
    iterations: int = 80_000
    dataset: str = "cifar10"
    teacher: str = "wrn-40-2"
    student: str = "wrn-16-1"
    seed: int = 0
    amp: bool = False
    log_every: int = 1_000
    checkpoint_every: int = 1_000
    mte_images: int = 1_000     # transition curves at the end of a run (§3): N, K, xi
    mte_steps: int = 100
    mte_step_size: float = 1.0
    mte_targets: str = "predicted"  # or "label", the author's rule (§3)


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


def zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """One outer iteration of Algorithm 1; returns the last generator and student losses.

    The same maths as the author's loop at a fraction of the cost: generator steps compute no
    teacher or student weight gradients, and the student steps train on a detached pseudo batch
    with teacher outputs computed once, instead of re-running the generator with autograd.
    """
    device = next(student.parameters()).device
    z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
    gen_params = list(generator.parameters())
    loss_g = loss_s = torch.tensor(float("nan"))  # reported as nan when n_g or n_s is 0
    for _ in range(cfg.n_g):
        with autocast(device, cfg.amp):
            x = generator(z)
            loss_g = generator_loss(student(x)[0], teacher(x)[0], cfg.temperature)
        # autograd.grad asks only for generator gradients, so no weight gradients of S or T are computed.
        for p, g in zip(gen_params, torch.autograd.grad(loss_g, gen_params)):
            p.grad = g
        nn.utils.clip_grad_norm_(gen_params, cfg.grad_clip)
        opt_generator.step()
    with torch.no_grad(), autocast(device, cfg.amp):
        x = generator(z)  # the pseudo batch of the updated generator, fixed for the n_s steps
        t_logits, t_acts = teacher(x)
    for _ in range(cfg.n_s):
        with autocast(device, cfg.amp):
            s_logits, s_acts = student(x)
            loss_s = student_loss(s_logits, t_logits, s_acts, t_acts, cfg.beta, cfg.temperature)
        opt_student.zero_grad(set_to_none=True)
        loss_s.backward()
        nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt_student.step()
    return {"loss_generator": loss_g.item(), "loss_student": loss_s.item()}


# ----------------------------------------------------------------------------------------------
# Evaluation: test accuracy (§4.9), transition curves and Mean Transition Error (§3, Algorithm 2).

@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
def agreeing_images(a, b, images, labels, mean, std, n, seed=0):
    """The first n test images, after a seeded shuffle, on which networks a and b predict the same
    class (right or wrong, as in the author's code). Returns (normalised x, labels, shared class)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    pa, pb = predict(a, images, mean, std), predict(b, images, mean, std)
    keep = torch.nonzero(pa == pb)[:n, 0]
    return normalize(images[keep], mean, std), labels[keep], pa[keep]


def transition_curves(stepped, observed, x, steps=100, step_size=1.0, labels=None, chunk_size=512):
    """Algorithm 2: push each image towards every other class j by gradient descent on the stepped
    network's cross-entropy, recording p_j of both networks before each update (step 0 = clean x).

    x must be images on which both networks agree. Targets exclude the shared predicted class
    (the paper) or, if `labels` is given, the true label (the author's code); for reference
    class i, row c targets j = (i + c + 1) mod C. All N * (C - 1) trajectories run as batches;
    eval-mode BatchNorm and a per-example *summed* cross-entropy make each one take exactly the
    step of the one-image algorithm. Returns (p_stepped, p_observed), each (N, C - 1, steps).
    """
    device, C = next(stepped.parameters()).device, stepped.fc.out_features
    x = x.to(device)
    with eval_mode(stepped), eval_mode(observed):
        with torch.no_grad():
            ref = stepped(x)[0].argmax(1) if labels is None else labels.to(device)
        targets = (ref[:, None] + torch.arange(1, C, device=device)) % C  # (N, C-1)
        xs, ts = x.repeat_interleave(C - 1, 0), targets.flatten()
        curves = torch.empty(2, len(ts), steps)
        for i in range(0, len(ts), chunk_size):
            xk, tk = xs[i:i + chunk_size].clone(), ts[i:i + chunk_size]
            for k in range(steps):
                xk.requires_grad_(True)
                logits = stepped(xk)[0]
                with torch.no_grad():
                    curves[0, i:i + len(tk), k] = logits.softmax(1).gather(1, tk[:, None])[:, 0].cpu()
                    curves[1, i:i + len(tk), k] = observed(xk)[0].softmax(1).gather(1, tk[:, None])[:, 0].cpu()
                if k < steps - 1:  # the last update would never be recorded
                    # grad w.r.t. the images only: no weight gradient is computed, the networks stay frozen
                    grad, = torch.autograd.grad(F.cross_entropy(logits, tk, reduction="sum"), xk)
                    xk = (xk - step_size * grad).detach()
    return curves.view(2, len(x), C - 1, steps).unbind(0)


def mean_transition_error(p_stepped, p_observed):
    """MTE: mean over images, targets and steps of |p_j^stepped - p_j^observed| (§3)."""
    return (torch.as_tensor(p_stepped) - torch.as_tensor(p_observed)).abs().mean().item()


def plot_transition_curves(panels, path):
    """Figure 4: per panel (title, p_stepped, p_observed), the mean curves of both networks with
    +-2 standard-error bands. matplotlib is optional: without it, one line and no plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no transition-curve plot (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), dpi=100, squeeze=False)
    for ax, (title, p_stepped, p_observed) in zip(axes[0], panels):
        for p, name in ((p_stepped, "stepped"), (p_observed, "observed (teacher)")):
            p = torch.as_tensor(p).flatten(0, 1)  # (N * (C-1), steps)
            mean, se = p.mean(0), p.std(0, unbiased=False) / math.sqrt(len(p))
            ax.plot(mean, label=name)
            ax.fill_between(range(p.shape[1]), mean - 2 * se, mean + 2 * se, alpha=.3)
        ax.set(xlabel="step k", ylabel="p_j of target class j", ylim=(0, 1),
               title=f"{title}: MTE = {mean_transition_error(p_stepped, p_observed):.3f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Checkpoints: tensors and plain Python types only, so every load can be weights_only=True.

def default_teacher_path(dataset, arch, data_dir="./data"):
    """Where train_teacher.py saves a teacher by default, and where zskt.py looks for it."""
    name = f"folder-{Path(data_dir).resolve().name}" if dataset == "folder" else dataset
    return Path("checkpoints") / f"{name}-{arch}.pt"


def save_atomic(obj, path):
    """torch.save through a temporary file and os.replace: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to a user
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise UserError(f"{path} holds pickled Python objects, which are not loaded because "
                            f"unpickling can run arbitrary code; re-save it as a dict of tensors, "
                            f"e.g. {{'state_dict': model.state_dict()}}") from None
        raise UserError(f"{path} is truncated or corrupt and cannot be read ({type(e).__name__}); "
                        f"re-create it or use another checkpoint") from None


def model_checkpoint(model, arch, dataset, mean, std, **meta):
    """The author's format (a dict with 'state_dict') plus plain metadata."""
    return {"state_dict": model.state_dict(), "arch": arch, "num_classes": model.fc.out_features,
            "dataset": dataset, "mean": list(mean), "std": list(std), **meta}


def load_model(path, arch=None, num_classes=None):
    """A WideResNet from a checkpoint (ours or the author's); returns (model, checkpoint dict).
    The architecture is read off the weights; a mismatch with `arch` / `num_classes` is refused."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if isinstance(state, dict):  # checkpoints saved from nn.DataParallel prefix every key
        state = {k.removeprefix("module."): v for k, v in state.items()}
    found, classes = infer_arch(state) if isinstance(state, dict) else (None, None)
    if found is None:
        raise UserError(f"{path} does not hold a WideResNet state dict")
    if (arch and arch != found) or (num_classes and num_classes != classes):
        raise UserError(f"{path} holds a {found} with {classes} classes, but a {arch or found} with "
                        f"{num_classes or classes} classes was expected; pass the matching architecture or file")
    model = wrn(found, classes)
    model.load_state_dict(state)
    return model, (ckpt if "state_dict" in ckpt else {"state_dict": state})


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
            "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy(), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(out, resume=False, overwrite=False):
    """An existing run directory is never reused or deleted unless the user asked for it."""
    out = Path(out)
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise UserError(f"--resume: there is no checkpoint.pt in {out} to resume from")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already holds files; pass --resume to continue that run, "
                            f"--overwrite to replace it, or another --out")
        import shutil
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {out} ({e.strerror}); pass a writable --out") from None
    return out


class StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a flag the training loop checks after each step, so it
    can save a checkpoint and exit cleanly; a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.signal, self.previous = None, {}
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def resolve_device(name=None):
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but CUDA is not available here; use --device cpu")
    return str(device)


def check_finite(iteration, losses, out):
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise UserError(f"iteration {iteration}: {', '.join(f'{k} = {v}' for k, v in bad.items())} is not finite; "
                        f"the last good checkpoint in {out} is intact (try a lower learning rate, or no --amp)")


def run_cli(main):
    """Entry point: a UserError becomes one line on stderr and exit status 2, Ctrl-C exits 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# A training run: Algorithm 1 with logging, checkpoints, resume and the final MTE.

def train_zero_shot(cfg, teacher, test_images, test_labels, mean, std, out, device="cpu", resume=False, log=print):
    """Trains a student from `teacher` without data; writes the run directory `out` (metrics.csv,
    samples_*.png, checkpoint.pt, student.pt, curves.npz, transition.png, summary.json)."""
    out, cl = Path(out), torch.channels_last  # channels_last: ~1.3x faster convolutions on CPU too
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    teacher = teacher.to(device, memory_format=cl).eval().requires_grad_(False)
    student = wrn(cfg.student, teacher.fc.out_features).to(device, memory_format=cl)
    generator = Generator(cfg.z_dim, test_images.shape[-1]).to(device, memory_format=cl)  # train mode throughout (§4.7)
    opt_s = torch.optim.Adam(student.parameters(), cfg.lr_student)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_generator)
    # One cosine step per outer iteration, to 0 at the end (§4.8).
    sched_s, sched_g = (torch.optim.lr_scheduler.CosineAnnealingLR(o, cfg.iterations) for o in (opt_s, opt_g))
    parts = {"student": student, "generator": generator, "opt_student": opt_s, "opt_generator": opt_g,
             "sched_student": sched_s, "sched_generator": sched_g}
    start, seconds = 0, 0.0
    if resume:
        state = load_checkpoint(out / "checkpoint.pt")
        for k, v in parts.items():
            v.load_state_dict(state[k])
        start, seconds = state["iteration"], state["seconds"]
        set_rng_state(state["rng"])
    t_pred = predict(teacher, test_images, mean, std)
    teacher_acc = (t_pred == test_labels).float().mean().item()
    z_grid = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    metrics = out / "metrics.csv"
    if resume and metrics.exists():  # drop rows logged after the checkpoint we resume from
        rows = [r for r in csv.DictReader(metrics.open()) if int(r["iteration"]) <= start]
    else:
        rows = []

    def checkpoint(iteration, elapsed):
        save_atomic({"iteration": iteration, "seconds": elapsed, "config": dataclasses.asdict(cfg),
                     "rng": rng_state(), **{k: v.state_dict() for k, v in parts.items()}}, out / "checkpoint.pt")

    log(f"teacher {cfg.teacher}: {teacher_acc:.2%} test accuracy | student {cfg.student} | "
        f"{cfg.iterations} iterations from {start} on {device}")
    t0, last = time.time() - seconds, time.time()
    with StopOnSignal() as stop:
        for it in range(start + 1, cfg.iterations + 1):
            losses = zero_shot_iteration(teacher, student, generator, opt_s, opt_g, cfg)
            check_finite(it, losses, out)
            sched_s.step(), sched_g.step()
            if it % cfg.log_every == 0 or it == cfg.iterations:
                s_pred = predict(student, test_images, mean, std)
                rows.append({"iteration": it, **losses, "student_test_acc": (s_pred == test_labels).float().mean().item(),
                             "agreement": (s_pred == t_pred).float().mean().item(), "seconds": time.time() - t0})
                write_csv(metrics, rows)
                save_samples(generator, z_grid, mean, std, out / f"samples_{it:06d}.png")
                rate = (it - start) / (time.time() - last)
                log(f"it {it}/{cfg.iterations} | loss_G {losses['loss_generator']:.4f} | "
                    f"loss_S {losses['loss_student']:.4f} | student {rows[-1]['student_test_acc']:.2%} "
                    f"(agrees with teacher {rows[-1]['agreement']:.2%}) | {rate:.2f} it/s | "
                    f"ETA {format_time((cfg.iterations - it) / rate)}")
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations or stop.signal:
                checkpoint(it, time.time() - t0)
            if stop.signal:
                raise KeyboardInterrupt(f"{stop.signal} after iteration {it}; checkpoint saved; "
                                        f"continue with: python zskt.py --out {out} --resume")
    student_acc = accuracy(student, test_images, test_labels, mean, std)
    save_atomic(model_checkpoint(student, cfg.student, cfg.dataset, mean, std, test_acc=student_acc,
                                 seed=cfg.seed, iterations=cfg.iterations), out / "student.pt")
    mte, _, _ = transition_report(student, teacher, test_images, test_labels, mean, std, cfg, out)
    summary = {"dataset": cfg.dataset, "teacher": cfg.teacher, "student": cfg.student, "iterations": cfg.iterations,
               "seed": cfg.seed, "device": device, "teacher_test_acc": teacher_acc, "student_test_acc": student_acc,
               "student_teacher_ratio": student_acc / max(teacher_acc, 1e-12), "mte": mte,
               "seconds": time.time() - t0, "config": dataclasses.asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def transition_report(stepped, observed, images, labels, mean, std, cfg, out, title="student"):
    """Transition curves on cfg.mte_images agreeing test images -> curves.npz, transition.png; MTE."""
    x, y, _ = agreeing_images(stepped, observed, images, labels, mean, std, cfg.mte_images)
    if len(x) == 0:
        print("no test image on which both networks agree, so no transition curves (MTE = nan)")
        return float("nan"), None, None
    p_s, p_o = transition_curves(stepped, observed, x, cfg.mte_steps, cfg.mte_step_size,
                                 labels=y if cfg.mte_targets == "label" else None)
    np.savez_compressed(out / "curves.npz", p_stepped=p_s.numpy(), p_observed=p_o.numpy(), labels=y.numpy())
    plot_transition_curves([(title, p_s, p_o)], out / "transition.png")
    return mean_transition_error(p_s, p_o), p_s, p_o


@torch.no_grad()
def save_samples(generator, z, mean, std, path):
    import torchvision
    # Batch statistics, as in training; the running statistics this moves are never used.
    torchvision.utils.save_image(denormalize(generator(z), mean, std), path, nrow=8)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def format_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


# ----------------------------------------------------------------------------------------------
# Command line.

def validate(cfg):
    """Bad values are refused before any compute is spent."""
    at_least = dict(iterations=1, batch_size=2, n_g=1, n_s=1, z_dim=1, log_every=1, checkpoint_every=1, mte_steps=1,
                    beta=0, mte_images=0)
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(cfg, name)}"
                            + (" (BatchNorm needs two examples)" if name == "batch_size" else ""))
    for name in ("lr_student", "lr_generator", "grad_clip", "temperature", "mte_step_size"):
        if not getattr(cfg, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, not {getattr(cfg, name)}")
    if cfg.mte_targets not in ("predicted", "label"):
        raise UserError(f"--mte-targets must be 'predicted' (the paper) or 'label' (the author's code), not {cfg.mte_targets!r}")
    wrn(cfg.teacher), wrn(cfg.student)  # raise on unknown names
    return cfg


def parse_args(argv):
    p = argparse.ArgumentParser(description="Zero-shot knowledge transfer (Micaelli & Storkey, 2019). "
                                "`python zskt.py curves -h` for transition curves of two checkpoints.")
    p.add_argument("--dataset", choices=DATASETS, help="default: shapes, the built-in offline dataset")
    for f in dataclasses.fields(Config):
        if f.name != "dataset":
            flag = "--" + f.name.replace("_", "-")
            if f.type is bool:
                p.add_argument(flag, action="store_const", const=True, default=None, help="bf16 autocast")
            else:
                p.add_argument(flag, type=f.type, default=None, help=f"default {f.default} (dataset presets may differ)")
    p.add_argument("--seeds", type=int, nargs="+", help="several runs, one subdirectory each, plus aggregate.json")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--teacher-checkpoint", help="default: where train_teacher.py saves it")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<teacher>-<student>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start afresh")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["curves"]:
        return curves_main(argv[1:])
    args = parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name) is not None}
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if args.resume:
        saved_file = Path(args.out or "") / "config.json"
        if not args.out or not saved_file.is_file():
            raise UserError("--resume needs --out pointing at a zskt.py run directory (one with config.json)")
        saved = json.loads(saved_file.read_text())
        given["teacher_checkpoint"] = args.teacher_checkpoint
        diff = [f"{k}={saved['config'].get(k, saved.get(k))!r} (saved) vs {v!r} (given)" for k, v in given.items()
                if v is not None and saved["config"].get(k, saved.get(k)) != v]
        if diff or (args.seeds and args.seeds != saved["seeds"]):
            raise UserError(f"--resume: the flags contradict the saved run: {'; '.join(diff) or 'seeds differ'}; "
                            f"drop those flags or start a new --out")
        cfg, seeds, args.teacher_checkpoint = Config(**saved["config"]), saved["seeds"], saved["teacher_checkpoint"]
    else:
        cfg = validate(make_config(**{"dataset": "shapes", **given}))
        seeds = args.seeds or [cfg.seed]
    out = Path(args.out or f"runs/{cfg.dataset}-{cfg.teacher}-{cfg.student}-{time.strftime('%Y%m%d-%H%M%S')}")
    teacher_path = Path(args.teacher_checkpoint or default_teacher_path(cfg.dataset, cfg.teacher, args.data_dir))
    if not teacher_path.is_file():
        raise UserError(f"no teacher checkpoint at {teacher_path}; train one with: python train_teacher.py "
                        f"--dataset {cfg.dataset} --arch {cfg.teacher}" +
                        (f" --data-dir {args.data_dir}" if cfg.dataset == "folder" else "") +
                        ", or pass --teacher-checkpoint")
    test_images, test_labels, classes = load_dataset(cfg.dataset, "test", args.data_dir)
    # The architecture comes from the file unless --teacher was given explicitly.
    teacher, meta = load_model(teacher_path, given.get("teacher"), len(classes))
    cfg.teacher = infer_arch(teacher.state_dict())[0]
    if "mean" not in meta and cfg.dataset not in MEAN_STD:
        raise UserError(f"{teacher_path} stores no normalisation constants; re-train it with train_teacher.py")
    mean, std = (meta["mean"], meta["std"]) if "mean" in meta else MEAN_STD[cfg.dataset]
    if not args.resume:
        prepare_run_dir(out, overwrite=args.overwrite)
        (out / "config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "seeds": seeds,
                                                     "teacher_checkpoint": str(teacher_path)}, indent=2))
    summaries = []
    for seed in seeds:
        run_dir = out if len(seeds) == 1 else out / f"seed{seed}"
        if len(seeds) > 1 and (run_dir / "summary.json").is_file():
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            continue
        resume_this = args.resume and (run_dir / "checkpoint.pt").is_file()
        run_dir.mkdir(exist_ok=True)
        summaries.append(train_zero_shot(dataclasses.replace(cfg, seed=seed), teacher, test_images, test_labels,
                                         mean, std, run_dir, device, resume=resume_this))
    if len(seeds) > 1:
        agg = {k: {"mean": float(np.mean([s[k] for s in summaries])), "std": float(np.std([s[k] for s in summaries]))}
               for k in ("teacher_test_acc", "student_test_acc", "mte")}  # np.std: population std, as the paper
        (out / "aggregate.json").write_text(json.dumps({"seeds": seeds, **agg}, indent=2))
    report(summaries, out)


def report(summaries, out):
    s = summaries[-1]
    lines = [f"teacher {s['teacher']} test accuracy   {s['teacher_test_acc']:.2%}",
             f"student {s['student']} test accuracy   {s['student_test_acc']:.2%}  (zero-shot: no real image seen)",
             f"student / teacher ratio      {s['student_teacher_ratio']:.3f}",
             f"mean transition error (MTE)  {s['mte']:.3f}",
             f"time                         {format_time(sum(x['seconds'] for x in summaries))}"]
    if len(summaries) > 1:
        acc = [x["student_test_acc"] for x in summaries]
        lines.insert(2, f"over {len(acc)} seeds: student {np.mean(acc):.2%} +- {np.std(acc):.2%} (population std)")
    print("\n".join(["", f"== {s['dataset']}: {s['teacher']} -> {s['student']} =="] + lines +
                     [f"written to {out}/: metrics.csv, samples_*.png, transition.png, curves.npz, student.pt, summary.json"]))


def curves_main(argv):
    p = argparse.ArgumentParser(prog="zskt.py curves", description="Transition curves and MTE (Algorithm 2) of one or "
                                "more stepped networks (e.g. a zero-shot and a KD+AT student) against a teacher.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (observed)")
    p.add_argument("--student", required=True, nargs="+", help="checkpoint(s) of the stepped network(s)")
    p.add_argument("--names", nargs="+", help="panel titles, one per --student")
    p.add_argument("--dataset", help="default: the teacher checkpoint's dataset")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--images", type=int, default=1000, help="N (paper: 1000)")
    p.add_argument("--steps", type=int, default=100, help="K (paper: 100)")
    p.add_argument("--step-size", type=float, default=1.0, help="xi (paper: 1)")
    p.add_argument("--targets", choices=("predicted", "label"), default="predicted")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/curves", help="directory for curves*.npz, transition.png, mte.json")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    teacher, meta = load_model(args.teacher)
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise UserError(f"{args.teacher} does not say which dataset it was trained on; pass --dataset")
    images, labels, _ = load_dataset(dataset, "test", args.data_dir)
    mean, std = (meta["mean"], meta["std"]) if "mean" in meta else MEAN_STD.get(dataset, (None, None))
    cfg = dataclasses.replace(Config(), mte_images=args.images, mte_steps=args.steps,
                              mte_step_size=args.step_size, mte_targets=args.targets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, panels, result = args.names or [Path(s).stem for s in args.student], [], {}
    for path, name in zip(args.student, names):
        student = load_model(path, num_classes=teacher.fc.out_features)[0].to(device)
        sub = out / name
        sub.mkdir(exist_ok=True)
        result[name], p_s, p_o = transition_report(student, teacher.to(device), images, labels, mean, std, cfg, sub, name)
        panels += [(name, p_s, p_o)] if p_s is not None else []
        print(f"{name}: MTE {result[name]:.4f} against {args.teacher} (N={args.images}, K={args.steps}, xi={args.step_size})")
    plot_transition_curves(panels, out / "transition.png")
    (out / "mte.json").write_text(json.dumps({"teacher": args.teacher, "mte": result, **vars(args)}, indent=2))


if __name__ == "__main__":
    run_cli(main)
