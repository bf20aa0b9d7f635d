"""Zero-shot Knowledge Transfer via Adversarial Belief Matching (Micaelli & Storkey, NeurIPS 2019).

The paper's method and nothing else, in the paper's order: data (Section 4.1) -> models -> losses
(Section 3.1, Eq. 1) -> Algorithm 1 -> evaluation (test accuracy; transition curves and the Mean
Transition Error, Section 4.4). What runs around it (the command line, run directories,
checkpoints, logs, figures) lives in zskt_run.py; `python zskt.py` hands over to it.

"Section", "Eq.", "Algorithm", "Table" and "Figure" refer to the paper (arXiv 1905.09768 v3);
"the author's code" is github.com/polo5/ZeroShotKnowledgeTransfer.

    python zskt.py                                    # the offline demo on the built-in shapes data
    python zskt.py --dataset cifar10 --teacher wrn-40-2 --student wrn-16-1
"""
import contextlib
import dataclasses
import math
import re
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Data (Section 4.1). A split is held in memory as uint8 images (N, 3, H, W) and int64 labels.
# Zero-shot training sees no image: the test split only measures.

# The author's constants, so that the author's published teachers work unchanged; CIFAR-100's are
# those of the data-free distillation code that publishes CIFAR-100 teachers (zju-vipa/CMI).
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "shapes": ((0.5021, 0.5012, 0.5004), (0.2900, 0.2902, 0.2893)),  # measured on its train split
}
DATASETS = ("shapes", "cifar10", "cifar100", "svhn", "folder")
WHERE = {  # what to put into --data-dir when a dataset cannot be downloaded
    "cifar10": "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "svhn": "{split}_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
}


class TestSet(NamedTuple):
    """What the evaluation needs of a test split: uint8 images (N, 3, H, W), int64 labels, the class
    names, and the per-channel mean and std that map the images into the networks' input space."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple
    mean: tuple
    std: tuple


def load_dataset(name, split, data_dir="./data", image_size=32):
    """(uint8 images, int64 labels, class names) of one split. CIFAR-10/100 and SVHN (its train
    split only, as the author) come from torchvision; `image_size` applies to folders only."""
    if name == "shapes":
        import zskt_shapes  # the built-in offline data
        return zskt_shapes.split(split)
    if name == "folder":
        return load_folder(Path(data_dir), split, image_size)
    if name not in WHERE:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    try:
        return load_torchvision(name, split, Path(data_dir))
    except ImportError as e:  # torchvision reads SVHN's .mat files with scipy, which is optional
        raise ImportError(f"loading {name} needs the {e.name} package: pip install "
                          f"{e.name}") from None
    except (OSError, RuntimeError, ValueError) as e:
        where = WHERE[name].format(split=split)
        from zskt_utils import corrupt_files  # machinery: torchvision's checksums
        bad = corrupt_files(name, Path(data_dir).resolve())
        if bad:  # torchvision says only "not found or corrupted", then fails to download
            it = "it" if len(bad) == 1 else "them"
            raise ValueError(f"{', '.join(map(str, bad))} failed torchvision's checksum (corrupt "
                             f"or incomplete) and could not be downloaded again ({e}); delete "
                             f"{it} and run again to download {it}, or put a fresh {where} "
                             f"there") from None
        raise FileNotFoundError(f"{name} is not in {Path(data_dir).resolve()} and could not be "
                                f"downloaded ({e}); put {where} into that folder, or pass "
                                f"--data-dir") from None


def load_torchvision(name, split, root):
    """A split of CIFAR-10, CIFAR-100 or SVHN as torchvision stores it under `root` (downloaded
    there if it is not on disk yet)."""
    import torchvision
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
           "svhn": torchvision.datasets.SVHN}[name]
    kwargs = dict(split=split) if name == "svhn" else dict(train=split == "train")
    try:  # files already on disk: no network needed
        ds = cls(root=root, download=False, **kwargs)
    except RuntimeError:
        ds = cls(root=root, download=True, **kwargs)
    if name == "svhn":
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long(), tuple("0123456789")
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets), tuple(ds.classes)


def load_folder(root, split, size=32):
    """ROOT/{train,test}/<class>/* as size x size RGB (bilinear, aspect ratio not kept). The
    classes are the train folder's subfolders, at least two, each of which must hold images in
    both splits; a test folder of another name would count for no class, so it is refused."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS
    from torchvision.transforms.functional import pil_to_tensor
    names = root / "train" if (root / "train").is_dir() else root / split
    classes = sorted(d.name for d in names.iterdir() if d.is_dir()) if names.is_dir() else []
    if not (root / split).is_dir() or not classes:
        raise FileNotFoundError(f"--dataset folder needs images in {root / split}/<class>/*; pass "
                                f"--data-dir pointing at a folder with train/ and test/ inside")
    if len(classes) < 2:  # one output: a loss of 0 and an accuracy of 100 %, whatever is learnt
        raise ValueError(f"--dataset folder needs at least two classes, but {names} holds one "
                         f"class folder, {classes[0]}; add a folder of images for each other "
                         f"class")
    extra = sorted(d.name for d in (root / split).iterdir() if d.is_dir() and d.name not in classes)
    if extra:
        raise ValueError(f"{', '.join(str(root / split / e) for e in extra)}: no class folder of "
                         f"that name in {names}, so the networks have no output for its images; "
                         f"add the class to {names} or remove the folder from {root / split}")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / split / name).glob("*")
                       if f.suffix.lower() in IMG_EXTENSIONS)
        if not files:  # a class without images would still get an output of the networks
            raise FileNotFoundError(f"the class folder {root / split / name} holds no image; add "
                                    f"images or remove the folder {name} from train/ and test/")
        for f in files:
            try:
                with Image.open(f) as im:
                    image = im.convert("RGB").resize((size, size), Image.BILINEAR)
            except OSError as e:  # PIL's UnidentifiedImageError is one
                raise ValueError(f"cannot read the image {f} ({e}); remove or replace it") from None
            images.append(pil_to_tensor(image))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels), tuple(classes)


def normalize(images, mean, std):
    """uint8 images -> the normalised input space that teacher, student and generator share."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def denormalize(x, mean, std):
    """The inverse of normalize, clamped to [0, 1]: what a (pseudo) image looks like."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Models (Section 4.1): the pre-activation WideResNet of the author's models/wresnet.py and the
# generator of models/generator.py (the paper says only "three convolutional layers").

class Block(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 shortcut conv where the width changes."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # camelCase because the author's published checkpoints use this key.
        self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if c_in != c_out else None

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv2(F.relu(self.bn2(self.conv1(o))))
        # The author's shortcut takes relu(bn1(x)) where the width changes, x itself elsewhere.
        return y + (x if self.convShortcut is None else self.convShortcut(o))


def group(n, c_in, c_out, stride):
    """n blocks, held as `.layer` so that the state-dict keys read block{g}.layer.{i}, as the
    author's."""
    g = nn.Module()
    blocks = [Block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(n)]
    g.layer = nn.Sequential(*blocks)
    return g


class WideResNet(nn.Module):
    """WRN-depth-k; forward returns (logits, (a1, a2, a3)), the three group outputs used for AT
    (taken before the final BN-ReLU, as the author's code)."""

    def __init__(self, depth, widen_factor, num_classes=10):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, "
                             f"...), not {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.block1 = group(n, w[0], w[1], 1)
        self.block2 = group(n, w[1], w[2], 2)
        self.block3 = group(n, w[2], w[3], 2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():  # the author's fan-out initialisation
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0, math.sqrt(2 / (k * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        a1 = self.block1.layer(self.conv1(x))
        a2 = self.block2.layer(a1)
        a3 = self.block3.layer(a2)
        pooled = F.relu(self.bn1(a3)).mean((2, 3))  # the author's 8x8 average pool at 32x32
        return self.fc(pooled), (a1, a2, a3)


def wrn(name, num_classes=10):
    """wrn("wrn-40-2") -> WideResNet(40, 2): the paper's names of its networks."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", str(name))
    if not m:
        raise ValueError(f"unknown architecture {name!r}; use wrn-DEPTH-WIDTH, e.g. wrn-16-1")
    return WideResNet(int(m[1]), int(m[2]), num_classes)


class Generator(nn.Module):
    """The author's models/generator.py (HEAD): z (100) -> 128x8x8 -> 16x16 -> 32x32 -> 3x32x32.

    No tanh: the final BatchNorm puts images in the normalised data space. Always in train mode
    (batch statistics). Other image sizes start from size/4 (16x16: 128x4x4 -> 8x8 -> 16x16).
    """

    def __init__(self, z_dim=100, image_size=32):
        super().__init__()
        self.start = image_size // 4
        self.linear = nn.Linear(z_dim, 128 * self.start ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 3, 3, 1, 1), nn.BatchNorm2d(3))

    def forward(self, z):
        return self.net(self.linear(z).view(-1, 128, self.start, self.start))


# ----------------------------------------------------------------------------------------------
# Losses (Section 3.1, Eq. 1), with the reductions of the author's solver.py: the published
# numbers come from them.

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
    """Sum over layers of the *squared* map difference, averaged over batch and positions (the
    author's attention_diff; Eq. 1 writes the non-squared norm)."""
    pairs = zip(student_acts, teacher_acts)
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in pairs)


def generator_loss(student_logits, teacher_logits, temperature=1.0):
    """L_G = -KL(T || S): the generator looks for images on which the student disagrees."""
    return -kl_divergence(student_logits, teacher_logits, temperature)


def student_loss(student_logits, teacher_logits, student_acts, teacher_acts, beta=250.0,
                 temperature=1.0):
    """L_S = KL(T || S) + beta * sum_l AT_l (Eq. 1); with beta = 0 the maps are not even compared
    (as the author's `if AT_beta > 0`)."""
    kl = kl_divergence(student_logits, teacher_logits, temperature)
    if beta == 0:
        return kl
    return kl + beta * attention_loss(student_acts, teacher_acts)


# ----------------------------------------------------------------------------------------------
# Algorithm 1: adversarial belief matching.

def setting(default, help):
    """A Config field with its --help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Config:
    """The settings of Algorithm 1, with the defaults of the author's scripts/ZeroShot/main*.sh
    (the paper's Section 4.1 where it gives them); PRESETS adapts them per dataset. Every field is
    a flag of `python zskt.py` (batch_size is --batch-size), documented by its help text."""
    batch_size: int = setting(128, "pseudo images per batch (the author's 128; the paper: none)")
    z_dim: int = setting(100, "dimension of the generator's input noise z")
    n_g: int = setting(1, "generator steps per pseudo batch (n_G in Algorithm 1)")
    n_s: int = setting(10, "student steps per pseudo batch (n_S in Algorithm 1)")
    beta: float = setting(250.0, "weight of the attention term (beta in Eq. 1; 0 turns it off)")
    lr_student: float = setting(2e-3, "student's Adam learning rate, cosine-annealed to 0")
    lr_generator: float = setting(1e-3, "generator's Adam learning rate, cosine-annealed to 0 "
                                        "(the author's 1e-3; the paper says 2e-3)")
    grad_clip: float = setting(5.0, "gradient-norm clipping of generator and student (the "
                                    "author's code; not in the paper)")
    temperature: float = setting(1.0, "softmax temperature of the KL term")
    iterations: int = setting(80_000, "outer iterations (N in Algorithm 1)")
    dataset: str = setting("cifar10", "the dataset whose test split measures the student")
    teacher: str = setting("wrn-40-2", "teacher architecture; by default read off its file")
    student: str = setting("wrn-16-1", "student architecture: wrn-DEPTH-WIDTH (e.g. wrn-16-1), "
                                       "resnet18, resnet34 or vgg11")
    seed: int = setting(0, "seed of the student's and generator's initialisation and of z")
    # Transition curves at the end of a run (Section 4.4): N images, K steps, step size xi.
    mte_images: int = setting(1_000, "test images for the final transition curves and MTE (N in "
                                     "Section 4.4; 0 skips them)")
    mte_steps: int = setting(100, "gradient steps per transition curve (K in Section 4.4)")
    mte_step_size: float = setting(1.0, "step size of those steps (xi in Section 4.4)")
    mte_targets: str = setting("label", "label: target classes skip the true label (the author's "
                                        "code, which produced Table 2); predicted: they skip the "
                                        "class both networks predict (the paper's text)")
    # How the run computes and what it keeps: not the paper's.
    amp: bool = setting(False, "bf16 autocast for the networks' forward passes, losses in fp32")
    compile: bool = setting(False, "torch.compile the three networks (pays off in long runs)")
    cuda_graph: bool = setting(False, "replay each outer iteration as one CUDA graph "
                                      "(zskt_graph.py): the same maths, one launch; CUDA only")
    tensorboard: bool = setting(False, "also log to RUN_DIR/tensorboard (needs the optional "
                                       "tensorboard package)")
    log_every: int = setting(1_000, "iterations between test evaluations, metrics.csv rows and "
                                    "sample grids")
    checkpoint_every: int = setting(1_000, "iterations between checkpoints (one is also written "
                                           "at the end and on Ctrl-C)")


PRESETS = {
    "cifar10": dict(iterations=80_000),
    "cifar100": dict(iterations=80_000),  # not in the paper: CIFAR-10's settings
    "svhn": dict(iterations=50_000),
    "folder": dict(iterations=80_000),
    # Demo-sized: docs/settings.md says why each value differs from the paper's.
    "shapes": dict(teacher="wrn-16-1", student="wrn-16-1", iterations=750, batch_size=64, n_s=20,
                   lr_student=5e-3, lr_generator=2e-3, log_every=50, checkpoint_every=250,
                   mte_images=100, mte_steps=30),
}


def make_config(dataset="cifar10", **overrides):
    """Config with the dataset's preset and then `overrides` applied."""
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    return Config(**{"dataset": dataset, **PRESETS[dataset], **overrides})


def autocast(device, enabled):
    """bf16 autocast for the networks' forward passes; the losses cast back to fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def generator_step(teacher, student, generator, z, opt_generator, cfg):
    """Algorithm 1, generator update: one Adam step on L_G = -KL(T(x_p) || S(x_p)), x_p = G(z).
    autograd.grad asks for the generator's gradients only, so no weight gradient of the teacher
    or the student is computed (the author's backward() computes both and discards them)."""
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
    """Algorithm 1, student update: one Adam step on L_S = KL(T || S) + beta * AT (Eq. 1)."""
    with autocast(x.device, cfg.amp):
        s_logits, s_acts = student(x)
        loss = student_loss(s_logits, t_logits, s_acts, t_acts, cfg.beta, cfg.temperature)
    opt_student.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
    opt_student.step()
    return loss.detach(), s_logits.detach()


def zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """One outer iteration of Algorithm 1: n_g generator steps on a new z, then n_s student steps
    on the pseudo batch of the updated generator. Its teacher outputs are computed once (the
    author re-runs the generator with autograd in every student step: the same maths at a higher
    cost). Returns device tensors, so that nothing waits for the device: the last losses (nan
    when n_g or n_s is 0), and the teacher's and the student's class probabilities on the pseudo
    batch (the author logs statistics of both)."""
    device = next(student.parameters()).device
    z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
    loss_g = loss_s = torch.full((), float("nan"), device=device)
    for _ in range(cfg.n_g):
        loss_g = generator_step(teacher, student, generator, z, opt_generator, cfg)
    with torch.no_grad(), autocast(device, cfg.amp):
        x = generator(z)  # the pseudo batch, fixed for the n_s steps
        t_logits, t_acts = teacher(x)
    s_logits = torch.full_like(t_logits, float("nan"))
    for _ in range(cfg.n_s):
        loss_s, s_logits = student_step(student, x, t_logits, t_acts, opt_student, cfg)
    return {"loss_generator": loss_g, "loss_student": loss_s,
            "teacher_probs": t_logits.float().softmax(1),
            "student_probs": s_logits.float().softmax(1)}


class Optimizers(NamedTuple):
    """Adam for the student and the generator, each with its cosine schedule (Section 4.1)."""
    student: torch.optim.Optimizer
    generator: torch.optim.Optimizer
    student_schedule: torch.optim.lr_scheduler.LRScheduler
    generator_schedule: torch.optim.lr_scheduler.LRScheduler


def optimizers(student, generator, cfg):
    """Adam (default betas, no weight decay) with one cosine-annealing step per outer iteration,
    down to 0 at iteration N, as the author's solver.py."""
    opt_s = torch.optim.Adam(student.parameters(), cfg.lr_student)
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_generator)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    return Optimizers(opt_s, opt_g, cosine(opt_s, cfg.iterations), cosine(opt_g, cfg.iterations))


def algorithm_1(teacher, student, generator, opts, cfg, first=1):
    """Algorithm 1 (zero-shot KT) from iteration `first` to N = cfg.iterations: each iteration
    draws a new z, takes n_g generator and n_s student steps, and anneals both learning rates.
    The teacher stays frozen in eval mode, the student and the generator in train mode. Yields
    (iteration, what zero_shot_iteration returned) after each iteration, so that the caller can
    log, checkpoint or stop between iterations."""
    teacher.eval()  # BatchNorm with its running statistics, as the author's solver.py
    student.train()  # BatchNorm with the pseudo batches' statistics, in both phases
    generator.train()
    for iteration in range(first, cfg.iterations + 1):
        out = zero_shot_iteration(teacher, student, generator, opts.student, opts.generator, cfg)
        opts.student_schedule.step()
        opts.generator_schedule.step()
        yield iteration, out


# ----------------------------------------------------------------------------------------------
# Evaluation: test accuracy, transition curves and Mean Transition Error (Section 4.4,
# Algorithm 2).

@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode for a while, then back in the mode it had."""
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
    predictions = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size].to(device), mean, std)
            predictions.append(model(x)[0].argmax(1).cpu())
    return torch.cat(predictions)


def accuracy(model, test):
    """The fraction of the TestSet's images that `model` classifies correctly."""
    return (predict(model, test.images, test.mean, test.std) == test.labels).float().mean().item()


@torch.no_grad()
def agreeing_images(a, b, test, n, seed=0, batch_size=500):
    """The first n test images, after a seeded shuffle, on which networks a and b predict the same
    class, right or wrong, as in the author's code. Returns (normalised x, labels, shared class).
    Stops predicting once it has n: N = 1,000 of 10,000 test images reads a few batches, not 20."""
    order = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))
    found, shared, count = [], [], 0
    for idx in order.split(batch_size):
        pa = predict(a, test.images[idx], test.mean, test.std)
        agree = pa == predict(b, test.images[idx], test.mean, test.std)
        found.append(idx[agree])
        shared.append(pa[agree])
        count += len(found[-1])
        if count >= n:
            break
    keep = torch.cat(found)[:n]
    x = normalize(test.images[keep], test.mean, test.std)
    return x, test.labels[keep], torch.cat(shared)[:n]


CHUNK = 512  # trajectories per batch in transition_curves


def transition_curves(stepped, observed, x, steps=100, step_size=1.0, labels=None, progress=None):
    """Algorithm 2: push each image towards every other class j by gradient descent on the
    stepped network's cross-entropy, recording p_j of both networks before each update (step 0 is
    the clean image).

    x must be images on which both networks agree. The targets skip the shared predicted class
    (the paper) or, if `labels` is given, the true label (the author's code); for reference class
    i, row c targets j = (i + c + 1) mod C. All N * (C - 1) trajectories run in batches of CHUNK:
    eval-mode BatchNorm and a per-example *summed* cross-entropy make each take exactly the step of
    the one-image algorithm. Returns (p_stepped, p_observed), each (N, C - 1, steps);
    `progress.update()` is called after every step of every batch.
    """
    device = next(stepped.parameters()).device
    x = x.to(device)
    with eval_mode(stepped), eval_mode(observed):
        with torch.no_grad():
            logits = stepped(x)[0]
        C = logits.shape[1]
        ref = logits.argmax(1) if labels is None else labels.to(device)
        targets = ((ref[:, None] + torch.arange(1, C, device=device)) % C).flatten()  # (N (C-1),)
        xs = x.repeat_interleave(C - 1, 0)
        # On the device: one copy to the host at the end, no wait per step.
        curves = torch.empty(2, len(targets), steps, device=device)
        for i in range(0, len(targets), CHUNK):
            window = slice(i, i + CHUNK)
            trajectory(stepped, observed, xs[window], targets[window], step_size,
                       curves[:, window], progress)
    return curves.cpu().view(2, len(x), C - 1, steps).unbind(0)


def trajectory(stepped, observed, x, targets, step_size, curves, progress=None):
    """Algorithm 2's inner loop for a batch of (image, target) pairs: record p_target of both
    networks into curves (2, batch, steps), then step x against the stepped network's CE."""
    x = x.clone()
    steps = curves.shape[-1]
    for k in range(steps):
        x.requires_grad_(True)
        logits = stepped(x)[0]
        with torch.no_grad():
            curves[0, :, k] = logits.float().softmax(1).gather(1, targets[:, None])[:, 0]
            curves[1, :, k] = observed(x)[0].float().softmax(1).gather(1, targets[:, None])[:, 0]
        if k < steps - 1:  # the last update would never be recorded
            # The gradient with respect to the images only: the networks stay frozen.
            loss = F.cross_entropy(logits, targets, reduction="sum")
            grad, = torch.autograd.grad(loss, x)
            x = (x - step_size * grad).detach()
        if progress is not None:
            progress.update()


def mean_transition_error(p_stepped, p_observed):
    """MTE: mean over images, targets and steps of |p_j^stepped - p_j^observed| (Section 4.4)."""
    return (torch.as_tensor(p_stepped) - torch.as_tensor(p_observed)).abs().mean().item()


if __name__ == "__main__":
    import zskt_run  # the command line, run directories and checkpoints
    zskt_run.run_cli(zskt_run.main)
