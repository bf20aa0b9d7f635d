"""What runs around the method in zskt.py: errors, files, run directories, signals, reports and
figures. Nothing here is part of the paper's method; zskt.py imports what it needs from here.
"""
import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# Errors, devices and printed commands.

class UserError(Exception):
    """A problem with the user's input: printed as one sentence, exit status 2, no traceback."""


class Stopped(Exception):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint: exit status 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.status = 128 + signum


def run_cli(main):
    """Entry point: a UserError becomes one line on stderr and exit status 2; a run stopped by a
    signal exits with 128 + its number (130 for Ctrl-C, 143 for SIGTERM)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.status)
    except KeyboardInterrupt as e:
        print(f"interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `... --list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def command(script, *args):
    """A command to print for the user: absolute, quoted paths, so it works from any directory."""
    here = Path(__file__).resolve().with_name(script)
    return " ".join(["python", *(shlex.quote(str(a)) for a in (here, *args))])


def resolve_device(name=None):
    """'auto' (or None) is CUDA when available, else the CPU; an unavailable device is refused."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise UserError(f"--device {name} was asked for, but it is not available here; use --device cpu"
                        + ("" if device.type in available else " (supported: cpu, cuda, cuda:N, mps)"))
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices here")
    return str(device)


def cpu_info():
    """/proc/cpuinfo, or nothing where there is none."""
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def device_name(device):
    """'NVIDIA H100 80GB HBM3', or the CPU's model name and the threads torch uses."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    info = cpu_info()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    return f"{model[1] if model else platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


# ----------------------------------------------------------------------------------------------
# Files: written atomically, read with weights_only=True.

def save_atomic(obj, path, save=None):
    """Save through a temporary file and os.replace: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    (save or torch.save)(obj, tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    """JSON with null where a number is nan or inf: a bare NaN is not JSON."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v
    save_atomic(json.dumps(clean(obj), indent=2, allow_nan=False), path, lambda text, f: Path(f).write_text(text))


def write_csv(path, rows):
    """metrics.csv, written atomically; rows of an older version may lack later columns."""
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def save(rows, tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
    save_atomic(rows, path, save)


def load_checkpoint(path):
    """torch.load(weights_only=True), with argparse.Namespace allowed too: the author's save_model
    stores its command-line args as one next to the weights. Anything else that needs unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to a user
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise UserError(f"{path} holds pickled Python objects, which are not loaded because "
                            f"unpickling can run arbitrary code; re-save it as a dict of tensors, "
                            f"e.g. {{'state_dict': model.state_dict()}}") from None
        raise UserError(f"{path} is truncated or corrupt and cannot be read ({type(e).__name__}); "
                        f"re-create it or use another checkpoint") from None


# ----------------------------------------------------------------------------------------------
# Reproducibility: every random state a resumed run needs.

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


# ----------------------------------------------------------------------------------------------
# Run directories: never overwritten silently, never written by two processes, stopped cleanly.

def prepare_run_dir(out, resume=False, overwrite=False, hint="pass --resume to continue that run, "):
    """An existing run directory is never reused or emptied unless the user asked for it. The lock
    file stays (the caller holds it, run_lock), and so does the log of a start that was killed
    before it wrote anything else."""
    out = Path(out)
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise UserError(f"--resume: there is no checkpoint.pt in {out} to resume from")
        return out
    old = [p for p in out.iterdir() if p.name not in (".lock", "log.txt")] if out.is_dir() else []
    if old and not overwrite:
        raise UserError(f"{out} already holds files; {hint}--overwrite to replace them, or another --out")
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {out} ({e.strerror}); pass a writable --out") from None
    return out


@contextlib.contextmanager
def run_lock(out):
    """One process per run directory: a second one is refused. The operating system drops the lock
    when its process dies, so a crash never leaves a run locked. A directory this call created is
    removed again if the run fails before it wrote anything but its lock (a failed start)."""
    out, created = Path(out), not Path(out).exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "w")
    except OSError as e:
        raise UserError(f"cannot write to output directory {out} ({e.strerror}); pass a writable --out") from None
    try:
        import fcntl  # POSIX; on Windows runs are not locked
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except OSError:
        f.close()
        raise UserError(f"another process is writing {out} right now; wait for it to end, or use another --out") from None
    try:
        yield out
    except (UserError, OSError):
        if created and {p.name for p in out.iterdir()} <= {".lock", "config.json", "log.txt", "teacher.pt"}:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        f.close()


class StopOnSignal:
    """The first SIGINT/SIGTERM is acknowledged at once and sets a flag that the training loop checks
    after each step, so it can save a checkpoint and exit cleanly. A second Ctrl-C stops at once,
    naming the checkpoint that survives (`saved`, which the loop keeps up to date)."""

    def __init__(self, saved="no checkpoint had been written yet"):
        self.saved, self.at_once = saved, None  # at_once: a message, when there is nothing left to save

    def __enter__(self):
        self.signal, self.signum, self.previous = None, None, {}
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.at_once:
            raise Stopped(f"{signal.Signals(signum).name} {self.at_once}", signum)
        if self.signal:
            raise KeyboardInterrupt(f"stopped at once without saving; {self.saved}")
        self.signal, self.signum = signal.Signals(signum).name, signum
        print(f"\n{self.signal}: stopping after this step and saving a checkpoint; press Ctrl-C again to stop "
              f"at once without saving", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------------------------
# Reports and figures.

def format_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def mean_std(values):
    """Mean and population std (np.std, as the author's main.py) over seeds; nan values are left out."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None, "n": len(v)}


def report(summaries, out):
    s, n = summaries[0], len(summaries)

    def show(key, fmt):
        m = mean_std([x[key] for x in summaries])
        return "n/a" if m["mean"] is None else f"{m['mean']:{fmt}}" + (
            f" +- {m['std']:{fmt}} (mean +- population std over {n} seeds)" if n > 1 else "")

    lines = ["", f"== {s['dataset']}: {s['teacher']} -> {s['student']} ==",
             f"teacher test accuracy        {show('teacher_test_acc', '.2%')}",
             f"student test accuracy        {show('student_test_acc', '.2%')}  (zero-shot: no real image seen)",
             f"student / teacher ratio      {show('student_teacher_ratio', '.3f')}",
             f"mean transition error (MTE)  {show('mte', '.3f')}",
             f"time                         {format_time(sum(x['seconds'] for x in summaries))}"]
    lines += [f"  seed {x['seed']}: student {x['student_test_acc']:.2%}, MTE "
              f"{'n/a' if x['mte'] is None or not math.isfinite(x['mte']) else format(x['mte'], '.3f')}"
              for x in summaries if n > 1]
    where, prefix = (Path(out), "") if n == 1 else (Path(out) / f"seed{s['seed']}", "seed*/")
    names = sorted({re.sub(r"_\d+\.png$", "_*.png", p.name) for p in where.iterdir() if not p.name.startswith(".")})
    print("\n".join(lines + [f"written to {out}/: " + ", ".join([prefix + f for f in names] +
                                                                  (["aggregate.json"] if n > 1 else []))]))


def plot_transition_curves(panels, path=None):
    """Figure 4: per panel (title, p_stepped, p_observed), the mean curves of both networks with
    +-2 standard-error bands. Written to `path`, or returned (a notebook shows it) when path is None."""
    try:
        plt = pyplot()
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
               title=f"{title}: MTE = {(torch.as_tensor(p_stepped) - torch.as_tensor(p_observed)).abs().mean():.3f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    return save_or_return(fig, path)


# ----------------------------------------------------------------------------------------------
# Watching a run: progress, a copy of the console in the run directory, pictures.

class Progress:
    """A tqdm bar on a terminal; in a log file (no terminal), a plain line every `every` seconds
    instead of carriage-return redraws. `note` shows the latest result (a line of its own in a log),
    and `extra` adds the seconds of the stages after this loop to the ETA of the whole run."""

    def __init__(self, total, desc, initial=0, unit="it", every=60.0, extra=0.0, file=None):
        self.file, self.every, self.extra, self.desc = file or sys.stderr, every, extra, desc
        self.total, self.n, self.t0, self.shown, self.note_text = total, initial, time.time(), time.time(), ""
        self.shown_n = initial
        self.start = initial
        self.bar = None
        if self.file.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)

    def eta(self):
        done = self.n - self.start
        left = (time.time() - self.t0) / done * (self.total - self.n) if done else float("nan")
        return left + self.extra

    def update(self, n=1):
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if self.extra and time.time() - self.shown >= 1:  # the postfix, once a second at most
                self.shown = time.time()
                self.bar.set_postfix_str(f"{self.note_text}; whole run ETA {format_time(self.eta())}", refresh=False)
        elif time.time() - self.shown >= self.every:
            self.line()

    def note(self, text):
        self.note_text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text + (f"; whole run ETA {format_time(self.eta())}" if self.extra else ""))
        self.line(text)

    def line(self, text=None):
        """One plain line: in a log file always, on a terminal only for notes (above the bar)."""
        self.shown, self.shown_n = time.time(), self.n
        rate = (self.n - self.start) / max(time.time() - self.t0, 1e-9)
        msg = (f"{self.desc} {self.n}/{self.total} | {rate:.2f} it/s | whole run ETA {format_time(self.eta())}"
               + (f" | {text}" if text else ""))
        if self.bar is not None:
            self.bar.write(msg, file=self.file) if text else None
        else:
            print(msg, file=self.file, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.shown_n != self.n:  # a log file gets the last state of every loop
            self.line()


@contextlib.contextmanager
def tee(path):
    """Everything printed to stdout and stderr meanwhile is also appended to `path` (a run's
    log.txt); a progress bar's redraws (carriage returns) stay on the terminal."""
    f = open(path, "a", buffering=1)

    class Tee:
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            self.stream.write(text)
            if "\r" not in text:
                f.write(text)
            return len(text)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(old[0]), Tee(old[1])
    try:
        yield f
    finally:
        sys.stdout, sys.stderr = old
        f.close()


def pyplot():
    """matplotlib.pyplot with a file backend unless a notebook or a display already chose one."""
    import matplotlib
    if "inline" not in matplotlib.get_backend().lower() and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_or_return(fig, path):
    """Write the figure to `path` and close it, or return it (a notebook shows it) when path is None."""
    if path is None:
        return fig
    fig.savefig(path)
    pyplot().close(fig)
    return path


def plot_training(rows, path=None):
    """training.png: test accuracy and agreement, both losses (means over each log interval), the
    teacher's and student's confidence on the pseudo batches, and the learning rates, per iteration."""
    plt = pyplot()
    get = lambda k: [float(r[k]) for r in rows]
    it = get("iteration")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2), dpi=100)
    panels = [("test accuracy", [("student", "student_test_acc"), ("agreement with teacher", "agreement")], (0, 1)),
              ("loss (interval mean)", [("student L_S", "loss_student"), ("generator -L_G", "loss_generator")], None),
              ("top-class probability on pseudo images", [("teacher", "teacher_confidence"),
                                                         ("student", "student_confidence")], (0, 1)),
              ("learning rate", [("student", "lr_student"), ("generator", "lr_generator")], None)]
    for ax, (title, series, ylim) in zip(axes, panels):
        for label, key in series:
            ax.plot(it, [-v for v in get(key)] if key == "loss_generator" else get(key), label=label, marker=".")
        ax.set(title=title, xlabel="iteration", ylim=ylim)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_or_return(fig, path)


def plot_samples(images, classes, confidences, names, path=None, columns=8):
    """A grid of pseudo images (N, 3, H, W in [0, 1]), each labelled with the class the teacher sees
    in it and the teacher's confidence: what the generator is "drawing"."""
    import torchvision
    plt = pyplot()
    n, (h, w), pad = len(images), images.shape[-2:], 2
    grid = torchvision.utils.make_grid(images.cpu(), nrow=columns, padding=pad, pad_value=1.0)
    rows = math.ceil(n / columns)
    fig = plt.figure(figsize=(columns * 1.1, rows * 1.1), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    for i, (c, p) in enumerate(zip(classes, confidences)):
        ax.text(pad + i % columns * (w + pad), pad + i // columns * (h + pad), f"{names[int(c)]} {float(p):.2f}",
                fontsize=6.5, va="top", ha="left", color="white", bbox=dict(facecolor="black", alpha=.6, pad=1, lw=0))
    return save_or_return(fig, path)



def tensorboard_writer(out):
    """A SummaryWriter in RUN_DIR/tensorboard; the tensorboard package is optional."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or leave --tensorboard out: metrics.csv and training.png hold the same numbers)") from None
    return SummaryWriter(str(Path(out) / "tensorboard"))


def log_tensorboard(board, row, images, probs, step):
    """What the author's logger showed: the scalars, the sample grid, and histograms of the teacher's and
    student's top-class probability and of the teacher's classes on the last pseudo batch."""
    import torchvision
    for key, value in row.items():
        if key != "iteration" and not key.startswith("teacher_class_"):
            board.add_scalar(key, float(value), step)
    board.add_image("pseudo images", torchvision.utils.make_grid(images, nrow=8), step)
    for who in ("teacher", "student"):
        board.add_histogram(f"{who} top-class probability", probs[f"{who}_probs"].amax(1), step)
    board.add_histogram("teacher class", probs["teacher_probs"].argmax(1), step)
    board.flush()


# ----------------------------------------------------------------------------------------------
# Data on disk, run directories of zskt.py, and the figures of a run.

def _download(cls, **kwargs):
    try:  # files already on disk: no network needed
        return cls(download=False, **kwargs)
    except RuntimeError:
        return cls(download=True, **kwargs)


def load_folder(root, split, size=32):
    """DIR/{train,test}/<class>/* as size x size RGB (bilinear, aspect ratio not kept); class indices
    come from the train folder names."""
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
                try:
                    with Image.open(f) as im:
                        images.append(pil_to_tensor(im.convert("RGB").resize((size, size), Image.BILINEAR)))
                except OSError as e:  # PIL's UnidentifiedImageError is one
                    raise UserError(f"cannot read the image {f} ({e}); remove it or replace it") from None
                labels.append(label)
    if not images:
        raise UserError(f"no image files found under {root / split}")
    return torch.stack(images), torch.tensor(labels), classes


def denormalize(x, mean, std):
    mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return (x.float() * std + mean).clamp(0, 1)


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def default_teacher_path(dataset, arch, data_dir="./data"):
    """Where train_teacher.py saves a teacher by default, and where zskt.py looks for it. A folder's
    name carries a hash of its full path, so two folders called `images` never share a teacher."""
    if dataset == "folder":
        where = Path(data_dir).resolve()
        dataset = f"folder-{where.name}-{hashlib.sha1(str(where).encode()).hexdigest()[:6]}"
    return Path("checkpoints") / f"{dataset}-{arch}.pt"


def read_run(out):
    """The config.json of a run directory, for --resume."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise UserError(f"--resume needs --out to be a zskt.py run directory, and {path} does not exist")
    try:
        saved = json.loads(path.read_text())
        return saved if "config" in saved and "teacher_checkpoint" in saved else {}[None]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a zskt.py run's configuration (damaged?); start a new --out") from None


def check_teacher(meta, dataset, image_size, path, allow):
    """A teacher trained on other data is refused, naming both, unless --allow-dataset-mismatch."""
    trained = [(k, meta[k]) for k, v in (("dataset", dataset), ("image_size", image_size)) if meta.get(k) not in (None, v)]
    if trained and not allow:
        raise UserError(f"{path} was trained on {', '.join(f'{k} {v}' for k, v in trained)}, but this run uses "
                        f"dataset {dataset} (image size {image_size}); pass the matching --dataset, another "
                        f"--teacher-checkpoint, or --allow-dataset-mismatch")


def panel_names(paths):
    """Default panel names: the file names, with their folder's name where two files share one."""
    stems = [Path(p).stem for p in paths]
    names = [f"{Path(p).resolve().parent.name}-{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names, 1)]


@torch.no_grad()
def labelled_samples(generator, teacher, z, mean, std):
    """Pseudo images G(z) in [0, 1], the teacher's class for each, and its confidence."""
    x = generator(z)  # batch statistics, as in training; the running statistics this moves are never used
    p = teacher(x)[0].float().softmax(1)
    return denormalize(x, mean, std), p.argmax(1), p.amax(1)


def save_samples(generator, teacher, z, mean, std, names, path):
    """samples_<iteration>.png: the pseudo images of a fixed z, labelled with the teacher's class and confidence."""
    images, classes, confidence = labelled_samples(generator, teacher, z, mean, std)
    plot_samples(images, classes, confidence, names, path)
    return images


def show_samples(generator, teacher, mean, std, names, n=64, seed=0):
    """For a notebook: a figure of n labelled pseudo images of a trained generator."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.linear.in_features, generator=torch.Generator().manual_seed(seed)).to(device)
    return plot_samples(*labelled_samples(generator, teacher.eval(), z, mean, std), names)


def plot_run(out):
    """For a notebook: the figure of training.png, drawn from a run directory's metrics.csv."""
    return plot_training(list(csv.DictReader(open(Path(out) / "metrics.csv"))))


CONFIG_HELP = {  # zskt.py --help: one line per Config field, in words, with the paper's symbol where it has one
    "batch_size": "pseudo images per batch (the author's scripts: 128; the paper does not say)",
    "z_dim": "dimension of the generator's input noise z",
    "n_g": "generator steps per pseudo batch (n_G in Algorithm 1)",
    "n_s": "student steps per pseudo batch (n_S in Algorithm 1)",
    "beta": "weight of the attention-transfer term (beta in Eq. 1; 0 turns it off)",
    "lr_student": "student's Adam learning rate, cosine-annealed to 0",
    "lr_generator": "generator's Adam learning rate, cosine-annealed to 0 (the author's 1e-3; the paper says 2e-3)",
    "grad_clip": "gradient-norm clipping of generator and student (the author's code; not in the paper)",
    "temperature": "softmax temperature of the KL term",
    "iterations": "outer iterations (N in Algorithm 1)",
    "teacher": "teacher architecture wrn-DEPTH-WIDTH; by default read from the teacher's file",
    "student": "student architecture wrn-DEPTH-WIDTH",
    "seed": "random seed of the student's and generator's initialisation and of z",
    "amp": "bf16 autocast for the networks' forward passes, losses in fp32 (opt-in)",
    "compile": "torch.compile the three networks (opt-in; see the README's Benchmarks for when it pays off)",
    "tensorboard": "also log to RUN_DIR/tensorboard: scalars, sample grids, confidence histograms (needs the "
                   "optional tensorboard package)",
    "log_every": "iterations between test evaluations, metrics.csv rows and sample grids",
    "checkpoint_every": "iterations between checkpoints (one is also written at the end and on Ctrl-C)",
    "mte_images": "test images for the final transition curves and MTE (N in Section 4.4; 0 skips them)",
    "mte_steps": "gradient steps per transition curve (K in Section 4.4)",
    "mte_step_size": "step size of those steps (xi in Section 4.4)",
    "mte_targets": "label: target classes skip the true label (the author's code, which produced Table 2); "
                   "predicted: skip the class both networks predict (the paper's text)",
}
