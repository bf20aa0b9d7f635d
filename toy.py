"""The toy experiment of Micaelli & Storkey, "Zero-shot Knowledge Transfer via Adversarial Belief
Matching" (NeurIPS 2019, arXiv 1905.09768 v3): Figure 1 and the toy-experiment paragraph of
Section 3.

A teacher MLP learns a 2-D, 3-class problem. A student of the same shape never sees that data: it is
trained only on 50 pseudo points that are optimised directly (no generator) to maximise
KL(teacher || student), i.e. Algorithm 1 with the generator replaced by free points. The points run
along the teacher's decision boundaries, which is where the student learns them.

    python toy.py                          # paper settings: 50 points, 2000 epochs, n_g 50, n_s 10
    python toy.py --epochs 300 --no-gif    # a quick look

Facts taken from the author's notebook (github.com/polo5/ZeroShotKnowledgeTransfer,
notebooks/toy_experiment.ipynb), not from the paper: 1000 points per blob; blob stds 0.3 / 0.4; hole
radius 0.3, its points dropped (not resampled); tight blobs of std 0.3 / 5 = 0.06; a 70/30 split;
teacher Adam lr 1e-3, betas (0.9, 0.999), batch 50 with drop_last, 30 epochs; the points are
x = 6 * sigmoid(raw) - 3 with raw ~ N((3, 3), I) at the start; Adam lr 1e-3 for both the points and
the student; point gradients clamped to +-3, student gradient norm clipped to 3; n_g = 50, n_s = 10,
2000 epochs; KL averaged over batch and classes (F.kl_div's default); the colours of the figure.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import zskt
from zskt_plots import pyplot
from zskt_utils import (Progress, UserError, check_seed, plural, resolve_device, run_cli,
                        seed_everything)

COLORS = ("red", "green", "blue")  # class c is drawn in COLORS[c], its probability in that channel


def make_data(seed, n=1000, test_fraction=0.3):
    """Figure 1's data: class 0 = two vertical blobs with holes, classes 1 and 2 = a horizontal blob
    plus a tight blob inside one of those holes. Returns float32 / int64 tensors, seeded split."""
    rng = np.random.default_rng(seed)
    short, long, hole = 0.3, 0.4, 0.3

    def blob(centre, std):
        return rng.normal(centre, std, size=(n, 2))

    def holed(centre):  # a vertical blob with the points within `hole` of its centre removed
        x = blob(centre, (short, long))
        return x[np.linalg.norm(x - centre, axis=1) >= hole]

    parts = [(holed((0, 1)), 0), (holed((0, -1)), 0),
             (blob((-1, 0), (long, short)), 1), (blob((0, 1), hole / 5), 1),
             (blob((1, 0), (long, short)), 2), (blob((0, -1), hole / 5), 2)]
    x = torch.tensor(np.concatenate([p for p, _ in parts]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([np.full(len(p), c) for p, c in parts]), dtype=torch.int64)
    order = torch.from_numpy(rng.permutation(len(x)))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def mlp():
    """Teacher and student alike (the toy experiment's MLPs; sizes from the notebook):
    2 -> 100 -> 500 -> 3."""
    return nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 500), nn.ReLU(),
                         nn.Linear(500, 3))


def train_teacher(teacher, x, y, epochs=30, lr=1e-3, batch_size=50):
    """The pretrained teacher: ordinary supervised training, the only time real data is used."""
    opt = torch.optim.Adam(teacher.parameters(), lr=lr, betas=(0.9, 0.999))
    for _ in range(epochs):
        for idx in torch.randperm(len(x), device=x.device).split(batch_size):
            if len(idx) < batch_size:
                continue  # drop_last, as in the notebook
            loss = nn.functional.cross_entropy(teacher(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return teacher.eval()


def to_input(raw):
    """The sigmoid keeps every pseudo point inside the plotted square [-3, 3]^2, whatever the
    optimiser does."""
    return 6 * torch.sigmoid(raw) - 3


def pseudo_point_steps(teacher, student, raw, opt, n_g, clamp=3.0):
    """n_g adversarial steps on the points: minimise L_G = -KL(T || S) (Algorithm 1's generator
    step)."""
    for _ in range(n_g):
        x = to_input(raw)
        loss = zskt.generator_loss(student(x), teacher(x))
        # Gradients for the points only: neither network's weight gradients are computed.
        (raw.grad,) = torch.autograd.grad(loss, [raw])
        raw.grad.clamp_(-clamp, clamp)
        opt.step()


def student_steps(teacher, student, x, opt, n_s, clip=3.0):
    """n_s steps of the student on the (fixed) current points: minimise KL(T || S) (Algorithm 1's
    student step)."""
    with torch.no_grad():
        t_logits = teacher(x)  # the points do not move during the student's steps
    for _ in range(n_s):
        loss = zskt.kl_divergence(student(x), t_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), clip)
        opt.step()


def train_student_on_pseudo_points(teacher, student, points=50, epochs=2000, n_g=50, n_s=10,
                                   lr_points=1e-3, lr_student=1e-3, snapshot_every=0, grid=None,
                                   progress=None):
    """Algorithm 1 with free points: n_g point steps, then n_s student steps, per epoch. Returns the
    trajectory, a tensor (epochs + 1, points, 2) of the points' positions (after each epoch's point
    steps), and, every `snapshot_every` epochs, (epoch, student probabilities on `grid`) for the
    GIF.
    `progress.update()` is called after every epoch."""
    device = next(student.parameters()).device
    teacher.requires_grad_(False)
    # The points start near (2.7, 2.7), far from the data.
    raw = (torch.randn(points, 2) + 3).to(device).requires_grad_()
    # fused=True: the same update as the default Adam in one kernel (120k tiny steps: overhead).
    opt_points = torch.optim.Adam([raw], lr=lr_points, betas=(0.9, 0.999), fused=True)
    opt_student = torch.optim.Adam(student.parameters(), lr=lr_student, betas=(0.9, 0.999),
                                   fused=True)
    trajectory = torch.empty(epochs + 1, points, 2)
    trajectory[0] = to_input(raw).detach().cpu()
    snapshots = [(0, probabilities(student, grid))] if snapshot_every else []
    for epoch in range(1, epochs + 1):
        pseudo_point_steps(teacher, student, raw, opt_points, n_g)
        x = to_input(raw).detach()
        trajectory[epoch] = x.cpu()
        student_steps(teacher, student, x, opt_student, n_s)
        if snapshot_every and (epoch % snapshot_every == 0 or epoch == epochs):
            snapshots.append((epoch, probabilities(student, grid)))
        if progress is not None:
            progress.update()
    return trajectory, snapshots


@torch.no_grad()
def probabilities(model, x):
    return torch.softmax(model(x), 1).cpu()


def make_grid(n, device):
    axis = torch.linspace(-3, 3, n)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], 1).to(device)


def draw_panel(ax, probs, n, x_test, y_test, title):
    """Decision regions as the class probabilities in RGB (the notebook's rendering), plus the
    boundaries."""
    ax.imshow(probs.view(n, n, 3).numpy(), extent=(-3, 3, -3, 3), origin="lower", alpha=0.3,
              interpolation="bilinear")
    for c in range(3):
        ax.scatter(*x_test[y_test == c].T, s=3, color=COLORS[c], alpha=0.2, linewidths=0)
    ax.set(xlim=(-3, 3), ylim=(-3, 3), xticks=[], yticks=[], aspect="equal", title=title)
    return boundaries(ax, probs, n)


def boundaries(ax, probs, n):
    axis = np.linspace(-3, 3, n)
    return ax.contour(axis, axis, probs.argmax(1).view(n, n).numpy(), levels=[0.5, 1.5], colors="k",
                      linewidths=0.8, alpha=0.6)


def plot(path, teacher_probs, student_probs, n, trajectory, x_test, y_test, titles, gif_path=None,
         snapshots=(), heading=""):
    """Figure 1: teacher and student decision regions side by side, with the pseudo points'
    trajectories, under `heading` (figure_title: the settings)."""
    plt = pyplot()
    x_test, y_test, traj = x_test.cpu(), y_test.cpu(), trajectory.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), constrained_layout=True)
    lines, heads, contours = [], [], []
    for ax, probs, title in zip(axes, (teacher_probs, student_probs), titles):
        contours.append(draw_panel(ax, probs, n, x_test, y_test, title))
        ax.scatter(*traj[0].T, s=8, color="0.4", zorder=3)  # where the points started
        lines.append(ax.plot(traj[:, :, 0], traj[:, :, 1], color="k", lw=0.5, alpha=0.3, zorder=4))
        heads.append(ax.scatter(*traj[-1].T, marker="P", s=70, facecolor="yellow", edgecolor="k",
                                lw=1, zorder=5))
    fig.suptitle(f"{heading}\npseudo points: grey where they started, yellow where they ended")
    fig.savefig(path, dpi=110)
    if gif_path and snapshots:
        from matplotlib.animation import PillowWriter
        student_ax = axes[1]
        m = int(len(snapshots[0][1]) ** 0.5)  # the snapshots' grid is coarser than the PNG's

        def frame(i):  # the student's regions and the points' paths up to snapshot i
            epoch, probs = snapshots[i]
            student_ax.images[0].set_data(probs.view(m, m, 3).numpy())
            contours[1].remove()
            contours[1] = boundaries(student_ax, probs, m)
            for panel_lines, head in zip(lines, heads):
                for k, line in enumerate(panel_lines):
                    line.set_data(traj[:epoch + 1, k, 0], traj[:epoch + 1, k, 1])
                head.set_offsets(traj[epoch])
            student_ax.set_title(f"Student, epoch {epoch}")
        writer = PillowWriter(fps=8)
        with writer.saving(fig, gif_path, dpi=60):  # FuncAnimation.save draws every frame twice
            for i in range(len(snapshots)):
                frame(i)
                writer.grab_frame()
    plt.close(fig)


def figure_title(args):
    """toy.png's title: the points, epochs, n_G and n_S, and any other setting that changes the
    result (seed, teacher epochs) where it is not the default: figures of different settings
    differ in their titles."""
    default = parse_args([])
    words = [plural(args.points, "pseudo point"), plural(args.epochs, "epoch"),
             f"n_G = {args.n_g}", f"n_S = {args.n_s}"]
    if args.seed != default.seed:
        words.append(f"seed {args.seed}")
    if args.teacher_epochs != default.teacher_epochs:
        words.append(f"teacher trained {plural(args.teacher_epochs, 'epoch')}")
    return "Zero-shot transfer on a 2-D toy problem: " + ", ".join(words)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-g", type=int, default=50, help="pseudo-point steps per epoch (default 50)")
    p.add_argument("--n-s", type=int, default=10, help="student steps per epoch (default 10)")
    p.add_argument("--points", type=int, default=50, help="number of pseudo points (default 50)")
    p.add_argument("--epochs", type=int, default=2000, help="epochs of Algorithm 1 (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the split and both "
                   "networks")
    p.add_argument("--teacher-epochs", type=int, default=30, help="teacher training epochs "
                   "(default 30)")
    p.add_argument("--out", default="runs/toy", help="output folder for toy.png, toy.json, toy.gif")
    p.add_argument("--gif", action=argparse.BooleanOptionalAction, default=True,
                   help="also write toy.gif")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for name in ("epochs", "points", "teacher_epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                            f"{getattr(args, name)}")
    for name in ("n_g", "n_s"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got "
                            f"{getattr(args, name)}")
    check_seed(args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    args.device = device = resolve_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    seed_everything(args.seed)

    x_train, y_train, x_test, y_test = (t.to(device) for t in make_data(args.seed))
    teacher = train_teacher(mlp().to(device), x_train, y_train, epochs=args.teacher_epochs)
    student = mlp().to(device)
    bar = Progress(args.epochs, "toy: Algorithm 1 with free points", unit="epoch", every=30.0)
    trajectory, snapshots = train_student_on_pseudo_points(
        teacher, student, args.points, args.epochs, args.n_g, args.n_s,
        snapshot_every=max(1, args.epochs // 40) if args.gif else 0, grid=make_grid(100, device),
        progress=bar)
    bar.close()

    t_pred = probabilities(teacher, x_test).argmax(1)
    s_pred = probabilities(student, x_test).argmax(1)
    y = y_test.cpu()
    result = {"teacher_test_acc": (t_pred == y).float().mean().item(),
              "student_test_acc": (s_pred == y).float().mean().item(),
              "agreement": (t_pred == s_pred).float().mean().item(),
              "n_train": len(x_train), "n_test": len(x_test),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "gif")}}
    print(f"teacher test acc {result['teacher_test_acc']:.2%} | student (zero-shot) test acc "
          f"{result['student_test_acc']:.2%} | agreement {result['agreement']:.2%}")
    titles = (f"Teacher (test acc {result['teacher_test_acc']:.1%})",
              f"Student, never saw the data (test acc {result['student_test_acc']:.1%})")
    n = 200  # grid resolution of the PNG's decision regions
    grid = make_grid(n, device)
    plot(out / "toy.png", probabilities(teacher, grid), probabilities(student, grid), n, trajectory,
         x_test, y_test, titles, out / "toy.gif" if args.gif else None, snapshots,
         figure_title(args))
    result["seconds"], result["threads"] = round(time.time() - start, 1), torch.get_num_threads()
    (out / "toy.json").write_text(json.dumps(result, indent=2) + "\n")
    gif = ", toy.gif" if args.gif else ""
    print(f"wrote {out / 'toy.png'}{gif} and toy.json in {result['seconds']} s")
    return result


if __name__ == "__main__":
    run_cli(main)
