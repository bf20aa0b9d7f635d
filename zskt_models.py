"""Which network a name or a weight file means: the paper's WideResNet (zskt.py), the CIFAR
ResNet-18/34 and VGG-11 that the data-free distillation literature uses as teachers, attention maps
for any classifier, and model files (ours, the author's, and the literature's shared teachers).

The ResNets and the VGG are not the paper's networks, so they live here and not in zskt.py. They
keep the published state-dict layouts, so that those weight files load as they are:
  - resnet18, resnet34: the CIFAR ResNet of DAFL (huawei-noah/Data-Efficient-Model-Compression,
    DAFL/resnet.py), as zju-vipa/CMI uses it (datafree/models/classifiers/resnet.py): a 3x3 stem
    without max-pool, post-activation BasicBlocks in layer1..layer4, classifier `linear`.
  - vgg11: VGG-11 with BatchNorm as HobbitLong/RepDistiller's models/vgg.py: block0..block4 of
    conv (with bias) + BN, max-pools between them, global average pool, classifier `classifier`.
Every network returns (logits, maps) as zskt.WideResNet does: the maps are its stage outputs.
"""
import argparse
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import zskt
from zskt_utils import UserError, load_checkpoint

NAMES = "wrn-DEPTH-WIDTH (e.g. wrn-16-1, wrn-40-2), resnet18, resnet34 or vgg11"
RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
VGG_LAYERS = {"vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512))}


# ----------------------------------------------------------------------------------------------
# The literature's CIFAR architectures.

class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a 1x1 conv + BN where the shape
    changes), then ReLU: the post-activation block of the CIFAR ResNets."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()  # no parameters, so no state-dict keys, where shapes agree
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: widths 64/128/256/512 at strides 1/2/2/2; forward returns (logits, the four
    stage outputs), 32/16/8/4 pixels wide at 32x32. PyTorch's default initialisation."""

    def __init__(self, blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, c_in = (64, 128, 256, 512), 64
        for i, (n, width) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(c_in if j == 0 else width, width, stride if j == 0 else 1)
                     for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            c_in = width
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(out)
            maps.append(out)
        return self.linear(out.mean((2, 3))), tuple(maps)


def vgg_block(c_in, widths):
    """conv3x3 (with bias) + BN, ReLU between them, none after the last (RepDistiller's layout)."""
    layers = []
    for width in widths:
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        c_in = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG with BatchNorm for CIFAR: five blocks, a 2x2 max-pool after each of the first three (and
    after the fourth for 64x64 inputs), global average pool, one linear classifier. forward returns
    (logits, the five block outputs before their ReLU): 32/16/8/4/4 pixels wide at 32x32."""

    def __init__(self, layers, num_classes=10):
        super().__init__()
        c_in = 3
        for i, widths in enumerate(layers):
            setattr(self, f"block{i}", vgg_block(c_in, widths))
            c_in = widths[-1]
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():  # RepDistiller's initialisation
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0, math.sqrt(2 / (k * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        size, maps = x.shape[2], []
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
            maps.append(x)
            x = F.relu(x)
            if i < 3 or (i == 3 and size == 64):
                x = F.max_pool2d(x, 2)
        return self.classifier(x.mean((2, 3))), tuple(maps)


# ----------------------------------------------------------------------------------------------
# Networks by name and by their weights.

def canonical(name):
    """The literature's file names spell WideResNets wrn40_2: the same as wrn-40-2 here."""
    m = re.fullmatch(r"wrn[-_]?(\d+)[-_](\d+)", str(name))
    return f"wrn-{m[1]}-{m[2]}" if m else str(name)


def build(name, num_classes=10):
    """A freshly initialised network of the architecture `name` (see NAMES)."""
    name = canonical(name)
    if name in RESNET_BLOCKS:
        return ResNet(RESNET_BLOCKS[name], num_classes)
    if name in VGG_LAYERS:
        return VGG(VGG_LAYERS[name], num_classes)
    if name.startswith("wrn-"):
        return zskt.wrn(name, num_classes)
    looks_like_file = Path(name).suffix in (".pt", ".pth", ".tar") or Path(name).is_file()
    hint = "; it looks like a file: pass a teacher's file with --teacher-checkpoint"
    raise ValueError(f"unknown architecture {name!r}; use {NAMES}"
                     + (hint if looks_like_file else ""))


def infer_arch(state_dict):
    """(name, num_classes) of a state dict of one of the architectures here, read off its keys and
    shapes; (None, None) for anything else."""
    try:
        if "block1.layer.0.conv1.weight" in state_dict:
            k = state_dict["block1.layer.0.conv1.weight"].shape[0] // 16
            n = len({key.split(".")[2] for key in state_dict if key.startswith("block1.layer.")})
            return f"wrn-{6 * n + 4}-{k}", state_dict["fc.weight"].shape[0]
        if "layer1.0.conv1.weight" in state_dict:
            blocks = tuple(len({key.split(".")[1] for key in state_dict
                                if key.startswith(f"layer{i}.")}) for i in range(1, 5))
            name = {v: k for k, v in RESNET_BLOCKS.items()}[blocks]
            return name, state_dict["linear.weight"].shape[0]
        if "block0.0.weight" in state_dict:
            convs = tuple(tuple(v.shape[0] for k, v in state_dict.items()
                                if k.startswith(f"block{i}.") and v.dim() == 4) for i in range(5))
            name = {v: k for k, v in VGG_LAYERS.items()}[convs]
            return name, state_dict["classifier.weight"].shape[0]
    except (KeyError, AttributeError, IndexError, TypeError):
        pass
    return None, None


def model_checkpoint(model, arch, dataset, mean, std, image_size=None, **meta):
    """The author's format (a dict with 'state_dict') plus plain metadata."""
    return {"state_dict": model.state_dict(), "arch": arch, "num_classes": infer_arch(
        model.state_dict())[1], "dataset": dataset, "mean": [float(m) for m in mean],
        "std": [float(s) for s in std], "image_size": image_size, **meta}


def load_model(path, arch=None, num_classes=None):
    """A network from a file: ours, the author's teachers and KD+AT students ('state_dict'), the
    author's zero-shot students ('student_state_dict'), and the literature's shared teachers
    (checkpoints/pretrained/<dataset>_<arch>.pth, 'state_dict'). Returns (model, metadata); the
    architecture is read off the weights, and a mismatch with `arch` / `num_classes` is refused."""
    ckpt = load_checkpoint(path)
    ckpt = ckpt if isinstance(ckpt, dict) else {}
    state = ckpt.get("state_dict", ckpt.get("student_state_dict", ckpt))
    if isinstance(state, dict):  # checkpoints saved from nn.DataParallel prefix every key
        state = {k.removeprefix("module."): v for k, v in state.items()}
    found, classes = infer_arch(state) if isinstance(state, dict) else (None, None)
    if found is None:
        for key, name in (("model", "model.pt"), ("student", "student.pt")):  # our run checkpoints
            if key in ckpt and "rng" in ckpt:
                raise UserError(f"{path} is a run's checkpoint for --resume; the trained model is "
                                f"in {Path(path).with_name(name)} next to it")
        raise UserError(f"{path} holds no state dict of a network this project knows ({NAMES})")
    arch = canonical(arch) if arch else None
    if (arch and arch != found) or (num_classes and num_classes != classes):
        raise UserError(f"{path} holds a {found} with {classes} classes, but a {arch or found} "
                        f"with {num_classes or classes} classes was expected; pass the matching "
                        f"architecture or file")
    model = build(found, classes)
    model.load_state_dict(state)
    meta = {}
    if state is not ckpt:
        meta = {k: v for k, v in ckpt.items() if not k.endswith("state_dict")}
    if isinstance(meta.get("args"), argparse.Namespace) and "dataset" not in meta:
        meta["dataset"] = str(getattr(meta["args"], "dataset", "")).lower() or None  # 'CIFAR10'
    if "dataset" not in meta:  # the literature's files: <dataset>_<arch>.pth
        named = re.match(r"(cifar100|cifar10|svhn)_", Path(path).name)
        meta["dataset"] = named[1] if named else None
    return model, meta


# ----------------------------------------------------------------------------------------------
# Attention maps: of any classifier, and paired between two architectures.

class WithAttention(nn.Module):
    """Any classifier as zskt.py's networks see one: forward returns (logits, maps), the maps
    being the outputs of the modules named in `layers` (taken by forward hooks; none for beta = 0).
    The classifier may return logits alone or a tuple whose first element is the logits."""

    def __init__(self, model, layers=()):
        super().__init__()
        self.model, self.layers, self.maps = model, tuple(layers), {}
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise ValueError(f"attention_layers: the model has no module called "
                             f"{', '.join(missing)}; its modules include "
                             f"{', '.join(list(modules)[1:8])}")
        self.handles = [modules[name].register_forward_hook(self.keeper(name))
                        for name in self.layers]

    def remove(self):
        """Takes the hooks off the classifier."""
        for handle in self.handles:
            handle.remove()

    def keeper(self, name):
        def hook(module, inputs, output):
            self.maps[name] = output
        return hook

    def forward(self, x):
        out = self.model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        return logits, tuple(self.maps.pop(name) for name in self.layers)


class Selected(nn.Module):
    """A network whose forward returns only some of its maps (`keep`, their indices)."""

    def __init__(self, model, keep):
        super().__init__()
        self.model, self.keep = model, tuple(keep)

    def forward(self, x):
        logits, maps = self.model(x)
        return logits, tuple(maps[i] for i in self.keep)


def unwrap(model):
    """The network inside WithAttention or Selected wrappers (its state dict has no prefix)."""
    while isinstance(model, (WithAttention, Selected)):
        model = model.model
    return model


def map_sizes(model, image_size):
    """The spatial sizes of a network's maps for one image_size x image_size input."""
    device = next(model.parameters()).device
    x = torch.zeros(2, 3, image_size, image_size, device=device)
    with torch.no_grad(), zskt.eval_mode(model):
        return [tuple(a.shape[2:]) for a in model(x)[1]]


def attention_pairs(teacher_sizes, student_sizes):
    """Which maps of the teacher and of the student attention transfer compares, as two lists of
    indices: all of them, in order, where the two have the same sizes (WideResNet to WideResNet,
    as the paper); otherwise, for each size both have, the deepest map of that size in each."""
    if teacher_sizes == student_sizes:
        return list(range(len(teacher_sizes))), list(range(len(student_sizes)))
    shared = [s for s in dict.fromkeys(student_sizes) if s in teacher_sizes]

    def deepest(sizes, size):
        return max(i for i, s in enumerate(sizes) if s == size)
    return [deepest(teacher_sizes, s) for s in shared], [deepest(student_sizes, s) for s in shared]


def pair_for_attention(teacher, student, image_size, beta):
    """(teacher, student, a sentence saying which maps are paired, or None where all pair as in
    the paper). Networks whose maps differ are wrapped to return the paired maps only; with
    beta > 0 and no map size in common the run is refused."""
    t_sizes, s_sizes = map_sizes(teacher, image_size), map_sizes(student, image_size)
    t_keep, s_keep = attention_pairs(t_sizes, s_sizes)
    if t_sizes == s_sizes:
        return teacher, student, None
    if beta > 0 and not t_keep:
        raise ValueError(f"attention transfer needs maps of one size in both networks, but the "
                         f"teacher's are {t_sizes or 'none'} and the student's "
                         f"{s_sizes or 'none'}; pass --beta 0 (beta=0.0) to distil without it")
    words = ", ".join(f"teacher map {t + 1} with student map {s + 1} ({s_sizes[s][0]}x"
                      f"{s_sizes[s][1]})" for t, s in zip(t_keep, s_keep))
    note = (f"attention transfer pairs {words}" if beta > 0 and t_keep
            else "attention transfer is off (beta = 0)")
    return Selected(teacher, t_keep), Selected(student, s_keep), note
