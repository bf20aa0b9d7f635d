"""Helpers shared by the tests in tests/: tiny runs, running commands as printed, signals, help
texts, made-up image folders, and checks of what a figure shows."""
import argparse
import contextlib
import csv
import functools
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zskt
import zskt_models
import zskt_run
from figures import text_outside  # noqa: F401  (the tests import it from here)
from zskt_utils import Stopped, load_checkpoint, run_cli

HERE = Path(__file__).resolve().parent.parent  # the repository
REAL_LOAD = zskt.load_dataset
TINY = ["--student", "wrn-10-1", "--batch-size", "8", "--n-s", "2", "--z-dim", "16",
        "--log-every", "2", "--mte-images", "3", "--mte-steps", "2"]
TT_TINY = ["--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "3"]


@functools.lru_cache(maxsize=None)
def shapes_slice():
    x, y, names = REAL_LOAD("shapes", "test")  # 2,000 images: quicker to make than the train split
    return {"train": (x[:800], y[:800], names), "test": (x[800:1200], y[800:1200], names)}


def tiny_config(**overrides):
    settings = dict(teacher="wrn-10-1", student="wrn-10-1", batch_size=8, z_dim=16, n_s=2,
                    log_every=2, checkpoint_every=2, mte_images=3, mte_steps=2)
    return zskt.make_config("shapes", **{**settings, **overrides})


def tiny_run(cfg_overrides, test, out, resume=False):
    """A zero-shot run of a random WRN-10-1 teacher, in-process."""
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1")
    return zskt_run.train_zero_shot(tiny_config(**cfg_overrides), teacher, test, out,
                                    resume=resume)


def metrics(path):
    """metrics.csv without its wall-clock column."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def weights(path):
    return load_checkpoint(path)["state_dict"]


def run_main(args, capsys, main=zskt_run.main):
    """(exit status, stderr) of a command line run in-process, as run_cli ends it."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(args))
    return e.value.code, capsys.readouterr().err.strip()


def run_printed(command, cwd, env):
    """Runs a command exactly as a program printed it, from another directory."""
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (command, r.stderr)  # slow is not wrong: no time limit
    return r


def cli(script, *flags, cwd, env=None):
    return subprocess.run([sys.executable, str(HERE / script), *flags], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def interrupt_at(monkeypatch, module, name, call):
    """A real SIGINT arrives during the call-th call of module.name."""
    calls, original = [0], getattr(module, name)

    def wrapped(*a, **k):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*a, **k)
    monkeypatch.setattr(module, name, wrapped)


def ignore_sigint():
    """preexec_fn of a process started as a background job of a script is: SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Run as `python -c HELD MODULE FUNCTION CALL SCRIPT ARGS...`: SCRIPT's command line (its own
# run_cli(main)), which prints "held" and waits for a line on stdin during the CALL-th call of
# MODULE.FUNCTION, so that a test's signal arrives at a known point, whatever the machine's speed.
HELD = """
import importlib, os, runpy, sys
sys.path.insert(0, os.path.dirname(sys.argv[4]))
module, name, call = importlib.import_module(sys.argv[1]), sys.argv[2], int(sys.argv[3])
original, calls = getattr(module, name), [0]
def held(*a, **k):
    calls[0] += 1
    if calls[0] == call:
        print("held", flush=True)
        sys.stdin.readline()
    return original(*a, **k)
setattr(module, name, held)
sys.argv = sys.argv[4:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def signal_when_held(hold, script, args, signum, cwd, **popen):
    """Runs `python SCRIPT ARGS` held at `hold` (module, function, call), sends `signum` there,
    then lets it go on; returns (exit status, stdout, stderr)."""
    module, name, call = hold
    p = subprocess.Popen([sys.executable, "-c", HELD, module, name, str(call), str(HERE / script),
                          *map(str, args)], cwd=cwd, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    before = []
    for line in p.stdout:
        if line == "held\n":
            break
        before.append(line)
    p.send_signal(signum)
    out, err = p.communicate("\n")
    return p.returncode, "".join(before) + out, err


def stopped_command(fn):
    """The command that a run stopped by SIGINT printed to continue it."""
    with pytest.raises(Stopped) as e:
        fn()
    assert e.value.status == 128 + signal.SIGINT
    return str(e.value).split("continue with: ", 1)[1]


def help_text(script, args, monkeypatch):
    """What `python SCRIPT ARGS --help` prints, in-process (a subprocess adds only start-up)."""
    import reproduce
    import train_teacher
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps as it does in a pipe
    mains = {"zskt.py": zskt_run.main, "train_teacher.py": train_teacher.main,
             "reproduce.py": reproduce.main}
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        mains[script]([*args, "--help"])
    return out.getvalue()


def folder_data(root, size=20, empty=()):
    """A folder dataset: 8 train and 4 test images of each of three colours (none in `empty`)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
        for name, rgb in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(0 if name in empty else n):
                a = np.clip(np.array(rgb) + rng.integers(-30, 30, (size, size, 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")


class Pickled:  # a class instance: only full unpickling could load it
    pass


def author_files(tmp_path, legacy):
    """Files exactly as the author's save_model writes them: ZeroShotKnowledgeTransfer's solver.py
    (a zero-shot student) and FewShotKnowledgeTransfer's (a teacher or KD+AT student), with the
    command-line args as an argparse.Namespace next to the weights."""
    torch.manual_seed(0)
    student, teacher = zskt.wrn("wrn-10-1"), zskt.wrn("wrn-10-1")
    generator = zskt.Generator(100, 16)
    opt_g = torch.optim.Adam(generator.parameters(), 1e-3)
    opt_s = torch.optim.Adam(student.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, 10)
    zs_args = argparse.Namespace(dataset="CIFAR10", total_n_pseudo_batches=80000, n_student_iter=10,
                                 seeds=[0, 1, 2], device=torch.device("cpu"),
                                 experiment_name="ZEROSHOTKT_CIFAR10", AT_beta=250.0)
    fs_args = argparse.Namespace(dataset="CIFAR10", n_images_per_class=-1,
                                 lr_decay_steps=[60, 120, 160], device=torch.device("cpu"),
                                 KT_mode="KD", seeds=[0])
    kw = {"_use_new_zipfile_serialization": False} if legacy else {}
    torch.save({"args": zs_args, "n_pseudo_batches": 80000,
                "generator_state_dict": generator.state_dict(),
                "student_state_dict": student.state_dict(),
                "optimizer_generator": opt_g.state_dict(),
                "optimizer_student": opt_s.state_dict(), "scheduler_generator": sched.state_dict(),
                "scheduler_student": sched.state_dict(), "test_acc": 0.8369},
               tmp_path / "zs_last.pth.tar", **kw)
    torch.save({"args": fs_args, "epoch": 200, "state_dict": teacher.state_dict(),
                "optimizer": torch.optim.SGD(teacher.parameters(), 0.1, momentum=0.9).state_dict(),
                "indices": [3, 1, 4], "test_acc": 0.9473}, tmp_path / "teacher_last.pth.tar", **kw)
    return student, teacher


def save_network(model, arch, path, dataset="shapes", image_size=None):
    torch.save(zskt_models.model_checkpoint(model, arch, dataset, *zskt.MEAN_STD.get(
        dataset, zskt.MEAN_STD["shapes"]), image_size), path)
    return path


# Run as `python -c CHECK_FIGURES SCRIPT`: every figure SCRIPT saves must keep its texts inside.
CHECK_FIGURES = """
import runpy, sys
import matplotlib
matplotlib.use("Agg")
from matplotlib.figure import Figure
sys.path.insert(0, {tests!r})
from figures import text_outside
save = Figure.savefig
def checked(fig, *a, **k):
    cut = text_outside(fig)
    assert not cut, f"texts outside the figure {{a[0] if a else ''}}: {{cut}}"
    return save(fig, *a, **k)
Figure.savefig = checked
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""
