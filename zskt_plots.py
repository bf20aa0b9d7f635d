"""The project's figures and TensorBoard logs: each draws numbers that other modules computed and
computes nothing of its own. Every function writes to `path`, or returns the matplotlib figure
(which a notebook shows) when path is None.
"""
import csv
import math
import sys
from pathlib import Path

import torch

import zskt


def pyplot():
    """matplotlib.pyplot with a file backend, unless a notebook or a display already chose one."""
    import matplotlib
    if "inline" not in matplotlib.get_backend().lower() and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_or_return(fig, path):
    """Write the figure to `path` and close it, or return it when path is None."""
    if path is None:
        return fig
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_transition_curves(panels, path=None):
    """Figure 4: per panel (title, p_stepped, p_observed), the mean curves of both networks with
    +-2 standard-error bands. One legend below the panels: inside, any corner hides a curve (a
    KD+AT student's curve climbs through the upper left, its teacher's lies along the bottom)."""
    try:
        plt = pyplot()
    except ImportError:
        print("matplotlib is not installed, so no transition-curve plot (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.5), dpi=100,
                             squeeze=False, layout="constrained")
    for ax, (title, p_stepped, p_observed) in zip(axes[0], panels):
        for p, name in ((p_stepped, "stepped"), (p_observed, "observed (teacher)")):
            p = torch.as_tensor(p).flatten(0, 1)  # (N * (C-1), steps)
            mean, se = p.mean(0), p.std(0, unbiased=False) / math.sqrt(len(p))
            ax.plot(mean, label=name)
            ax.fill_between(range(p.shape[1]), mean - 2 * se, mean + 2 * se, alpha=.3)
        mte = zskt.mean_transition_error(p_stepped, p_observed)
        ax.set(xlabel="step k", ylabel="p_j of target class j", ylim=(0, 1),
               title=f"{title}: MTE = {mte:.3f}")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    return save_or_return(fig, path)


def plot_training(rows, path=None):
    """training.png: test accuracy and agreement, both losses (means over each log interval), the
    teacher's and student's confidence on the pseudo batches, and the learning rates."""
    plt = pyplot()
    iterations = [float(r["iteration"]) for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2), dpi=100)
    panels = [("test accuracy", (0, 1), [("student", "student_test_acc"),
                                         ("agreement with teacher", "agreement")]),
              ("loss (interval mean)", None, [("student L_S", "loss_student"),
                                              ("generator -L_G", "loss_generator")]),
              ("top-class probability on pseudo images", (0, 1),
               [("teacher", "teacher_confidence"), ("student", "student_confidence")]),
              ("learning rate", None, [("student", "lr_student"), ("generator", "lr_generator")])]
    for ax, (title, ylim, series) in zip(axes, panels):
        for label, key in series:
            sign = -1 if key == "loss_generator" else 1
            ax.plot(iterations, [sign * float(r[key]) for r in rows], label=label, marker=".")
        ax.set(title=title, xlabel="iteration", ylim=ylim)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_or_return(fig, path)


def plot_samples(images, classes, confidences, names, path=None, columns=8, title=None):
    """A grid of pseudo images (N, 3, H, W in [0, 1]), each labelled with the class the teacher
    sees in it and the teacher's confidence: what the generator is "drawing". `title`, when
    given, goes in a band above the grid."""
    import torchvision
    plt = pyplot()
    (h, w), pad = images.shape[-2:], 2
    grid = torchvision.utils.make_grid(images.cpu(), nrow=columns, padding=pad, pad_value=1.0)
    rows = math.ceil(len(images) / columns)
    width, height, band = columns * 1.1, rows * 1.1, 0.3 if title else 0.0  # inches
    fig = plt.figure(figsize=(width, height + band), dpi=110)
    ax = fig.add_axes((0, 0, 1, height / (height + band)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    for i, (c, p) in enumerate(zip(classes, confidences)):
        ax.text(pad + i % columns * (w + pad), pad + i // columns * (h + pad),
                f"{names[int(c)]} {float(p):.2f}", fontsize=6.5, va="top", ha="left",
                color="white", bbox=dict(facecolor="black", alpha=.6, pad=1, lw=0))
    if title:
        fig.text(0.5, 1 - band / 2 / (height + band), title, ha="center", va="center",
                 fontsize=9)
    return save_or_return(fig, path)


@torch.no_grad()
def labelled_samples(generator, teacher, z, mean, std):
    """Pseudo images G(z) in [0, 1], the teacher's class for each, and its confidence. The
    generator runs in train mode whatever mode it is in: its BatchNorm layers then use the
    batch's statistics, as when it makes the images the student trains on (Algorithm 1). It is
    left as it was, its mode and its running statistics (which a train-mode forward updates). The
    author's grids (LearnableLoader.samples, polo5/ZeroShotKnowledgeTransfer) are drawn in eval
    mode, from running statistics that no training step uses."""
    training = generator.training
    buffers = {k: v.clone() for k, v in generator.named_buffers()}
    try:
        x = generator.train()(z)
    finally:
        generator.train(training)
        for k, v in generator.named_buffers():
            v.copy_(buffers[k])
    p = teacher(x)[0].float().softmax(1)
    return zskt.denormalize(x, mean, std), p.argmax(1), p.amax(1)


def save_samples(generator, teacher, z, test, path, title=None):
    """samples_<iteration>.png: the pseudo images of a fixed z, labelled with the teacher's class
    and confidence, under an optional title. Returns the images."""
    images, classes, confidence = labelled_samples(generator, teacher, z, test.mean, test.std)
    plot_samples(images, classes, confidence, test.classes, path, title=title)
    return images


def show_samples(generator, teacher, mean, std, names, n=64, seed=0):
    """For a notebook: a figure of n labelled pseudo images of a trained generator."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.linear.in_features, generator=torch.Generator().manual_seed(seed))
    samples = labelled_samples(generator, teacher.eval(), z.to(device), mean, std)
    return plot_samples(*samples, names)


def plot_run(out):
    """For a notebook: the figure of training.png, drawn from a run directory's metrics.csv."""
    with open(Path(out) / "metrics.csv") as f:
        return plot_training(list(csv.DictReader(f)))


def tensorboard_writer(out):
    """A SummaryWriter in RUN_DIR/tensorboard; the tensorboard package is optional."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or leave --tensorboard out: metrics.csv and training.png hold the "
                          "same numbers)") from None
    return SummaryWriter(str(Path(out) / "tensorboard"))


def log_tensorboard(board, row, images, probs, step):
    """What the author's logger showed: the scalars, the sample grid, and histograms of the
    teacher's and student's top-class probability and of the teacher's classes on the last
    pseudo batch."""
    import torchvision
    for key, value in row.items():
        if key != "iteration" and not key.startswith("teacher_class_"):
            board.add_scalar(key, float(value), step)
    board.add_image("pseudo images", torchvision.utils.make_grid(images, nrow=8), step)
    for who in ("teacher", "student"):
        board.add_histogram(f"{who} top-class probability", probs[f"{who}_probs"].amax(1), step)
    board.add_histogram("teacher class", probs["teacher_probs"].argmax(1), step)
    board.flush()
