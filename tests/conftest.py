"""Fixtures shared by the tests in tests/: Python's own SIGINT handler in every test, small data, a
random teacher file, a user's shell."""
import os
import shlex
import signal
import sys

import pytest
import torch

import zskt
import zskt_models
from helpers import REAL_LOAD, shapes_slice


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """Every test starts with Python's own SIGINT handler, however pytest was started: a process
    started with SIGINT ignored (a background job of a script, `nohup ... &`, some CI launchers)
    keeps it ignored, and Python then installs none, so a test's real SIGINT would do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def shapes_test():
    """200 shapes test images as a TestSet with the shapes normalisation."""
    x, y, classes = zskt.load_dataset("shapes", "test")
    return zskt.TestSet(x[:200], y[:200], classes, *zskt.MEAN_STD["shapes"])


@pytest.fixture
def teacher_file(tmp_path):
    """A random WRN-10-1 teacher for shapes, saved as train_teacher.py saves one."""
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1"), "wrn-10-1", "shapes",
                                            *zskt.MEAN_STD["shapes"]), path)
    return path


@pytest.fixture
def small_shapes(monkeypatch):
    """shapes as 800 train and 400 test images (slices of the real test split): in-process
    train_teacher.py runs take seconds."""
    monkeypatch.setattr(zskt, "load_dataset", lambda name, split, *a:
                        shapes_slice()[split] if name == "shapes" else REAL_LOAD(name, split, *a))


@pytest.fixture
def short_test_split(monkeypatch):
    """shapes with its whole train split (the plans' M-image subsets need 200 per class) and 200
    test images: the in-process runs spend their time on the plan, not on evaluation."""
    def load(name, split, *a):
        x, y, names = REAL_LOAD(name, split, *a)
        return (x[:200], y[:200], names) if (name, split) == ("shapes", "test") else (x, y, names)
    monkeypatch.setattr(zskt, "load_dataset", load)


@pytest.fixture(scope="session")
def user_env(tmp_path_factory):
    """The environment of a user's shell in which `python` is the interpreter running the tests.
    A wrapper script, not a symlink: started through a symlink in another folder, a virtual
    environment's interpreter finds no pyvenv.cfg beside it and runs as the base interpreter."""
    bin_dir = tmp_path_factory.mktemp("bin")
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
