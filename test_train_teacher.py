"""Tests of train_teacher.py: pytest + hypothesis, CPU only, self-contained (tmp_path for every file).

In-process runs replace zskt.load_dataset('shapes') by a slice of the real shapes test split, so
they take seconds; one subprocess run uses the real data and the default paths.
"""
import functools
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings, strategies as st
from PIL import Image

import train_teacher as tt
import zskt

HERE = Path(__file__).resolve().parent
REAL_LOAD = zskt.load_dataset
TINY = ["--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "3"]


@functools.lru_cache(maxsize=None)
def shapes_slice():
    x, y, names = REAL_LOAD("shapes", "test")  # 2,000 images: quicker to make than the train split
    return {"train": (x[:800], y[:800], names), "test": (x[800:1200], y[800:1200], names)}


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(zskt, "load_dataset", lambda name, split, data_dir="./data":
                        shapes_slice()[split] if name == "shapes" else REAL_LOAD(name, split, data_dir))


def state(path):
    return zskt.load_checkpoint(path)["state_dict"]


def cli(*flags, cwd):
    return subprocess.run([sys.executable, str(HERE / "train_teacher.py"), *flags], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------- subset

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(3, 40), min_size=2, max_size=6), st.data(), st.integers(0, 2**31))
def test_per_class_subset_has_exactly_m_per_class(counts, data, seed):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    m = data.draw(st.integers(1, min(counts)))
    idx = tt.per_class_subset(labels, m, seed)
    assert len(set(idx.tolist())) == len(idx) == m * len(counts)
    assert torch.bincount(labels[idx]).tolist() == [m] * len(counts)
    assert torch.equal(idx, tt.per_class_subset(labels, m, seed))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31))
def test_per_class_subset_changes_with_the_seed(m, seed):
    labels = torch.arange(500) % 10  # 50 per class: two seeds agree with probability < 1e-16
    assert not torch.equal(tt.per_class_subset(labels, m, seed), tt.per_class_subset(labels, m, seed + 1))


def test_per_class_subset_limits():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert tt.per_class_subset(labels, -1, 0).tolist() == list(range(8))
    for m in (0, 3, -2):  # class 1 has only 2 images
        with pytest.raises(zskt.UserError, match="samples-per-class"):
            tt.per_class_subset(labels, m, 0)


def test_schedule_scales_epochs_and_milestones_like_the_author():
    assert tt.schedule(200, 50_000, 10, -1) == (200, [60, 120, 160])
    assert tt.schedule(100, 73_257, 10, -1) == (100, [30, 60, 80])
    # M = 200 on CIFAR-10: scale 25, as main.py of FewShotKnowledgeTransfer computes it
    assert tt.schedule(200, 50_000, 10, 200) == (5000, [1500, 3000, 4000])


# ---------------------------------------------------------------------------------------------- augmentation

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8), st.booleans(), st.integers(0, 1000))
def test_crop_flip_equals_torchvision_on_padded_images(top, left, flip, seed):
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    n = len(x)
    out = tt.crop_flip(x, torch.full((n,), top), torch.full((n,), left), torch.full((n,), flip))
    expected = TF.crop(TF.pad(x, [4], fill=0), top, left, 32, 32)
    assert torch.equal(out, TF.hflip(expected) if flip else expected)


def test_crop_flip_by_hand():
    x = torch.arange(2 * 3 * 32 * 32).view(2, 3, 32, 32).to(torch.uint8) | 1  # no zero pixels
    z = lambda v: torch.full((2,), v)
    assert torch.equal(tt.crop_flip(x, z(4), z(4), z(False)), x)                      # centre crop
    assert torch.equal(tt.crop_flip(x, z(4), z(4), z(True)), torch.flip(x, [3]))      # mirror
    out = tt.crop_flip(x, z(0), z(8), z(False))  # window moved up by 4 and right by 4
    assert torch.equal(out[:, :, 4:, :28], x[:, :, :28, 4:])
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, 28:] == 0).all()                # black padding


def test_augment_draws_real_crops_and_flips():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = tt.augment(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, tt.augment(x, torch.Generator().manual_seed(5)))
    params = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    tops, lefts, flips = (torch.tensor(v) for v in zip(*params))
    found = set()
    for i in range(len(x)):  # every output is one of the 162 crops/flips of its own input
        match = (tt.crop_flip(x[i].expand(len(params), -1, -1, -1), tops, lefts, flips) == out[i]).flatten(1).all(1)
        assert match.any()
        found.add(params[int(match.nonzero()[0])])
    assert len(found) > 20 and {f for *_, f in found} == {False, True}


# ---------------------------------------------------------------------------------------------- loss

def hand_kd_at(s, t, y, s_acts, t_acts, alpha, T, beta):
    """(1-a) CE + 2 a T^2 KL + beta AT with explicit loops, in float64."""
    def log_softmax(v):
        return v - v.max() - np.log(np.exp(v - v.max()).sum())

    B, C = s.shape
    ce = sum(-log_softmax(s[b])[y[b]] for b in range(B)) / B
    kl = 0.0
    for b in range(B):
        lp, lq = log_softmax(t[b] / T), log_softmax(s[b] / T)
        for c in range(C):
            kl += np.exp(lp[c]) * (lp[c] - lq[c])
    kl /= B * C  # F.kl_div's elementwise mean: over the batch *and* the classes
    at = 0.0
    for a_s, a_t in zip(s_acts, t_acts):
        total = 0.0
        for b in range(B):
            fs, ft = (a_s[b] ** 2).mean(0).ravel(), (a_t[b] ** 2).mean(0).ravel()  # channel mean of A^2
            fs, ft = fs / np.sqrt((fs ** 2).sum()), ft / np.sqrt((ft ** 2).sum())
            total += sum((fs[i] - ft[i]) ** 2 for i in range(fs.size))
        at += total / (B * fs.size)
    return (1 - alpha) * ce + 2 * alpha * T * T * kl + beta * at


def test_kd_at_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, generator=g) * 3, torch.randn(3, 4, generator=g) * 3
    y = torch.tensor([0, 3, 1])
    s_acts = [torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 5, 2, 2, generator=g)]
    t_acts = [torch.randn(3, 6, 4, 4, generator=g), torch.randn(3, 3, 2, 2, generator=g)]
    S, Tt, Y = s.double().numpy(), t.double().numpy(), y.numpy()
    SA, TA = ([a.double().numpy() for a in acts] for acts in (s_acts, t_acts))
    for alpha, T, beta in [(0.9, 4.0, 1000.0), (0.3, 1.5, 7.0)]:
        expected = hand_kd_at(S, Tt, Y, SA, TA, alpha, T, beta)
        kwargs = {} if alpha == 0.9 else dict(alpha=alpha, temperature=T, beta=beta)  # the defaults are the paper's
        assert tt.kd_at_loss(s, t, y, s_acts, t_acts, **kwargs).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------- runs

def test_a_run_writes_a_teacher_that_zskt_loads(small_shapes, tmp_path):
    tt.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "run")])
    model, ckpt = zskt.load_model(tmp_path / "run" / "model.pt", arch="wrn-10-1", num_classes=10)
    assert {"dataset": "shapes", "arch": "wrn-10-1", "epoch": 1, "seed": 0}.items() <= ckpt.items()
    assert ckpt["mean"] == list(zskt.MEAN_STD["shapes"][0]) and ckpt["std"] == list(zskt.MEAN_STD["shapes"][1])
    x, y, _ = shapes_slice()["test"]
    assert ckpt["test_acc"] == pytest.approx(zskt.accuracy(model, x, y, ckpt["mean"], ckpt["std"]), abs=1e-6)
    assert zskt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_cli_default_paths_and_no_silent_overwrite(tmp_path):
    r = cli("--arch", "wrn-10-1", "--epochs", "1", "--max-steps", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    teacher = tmp_path / zskt.default_teacher_path("shapes", "wrn-10-1")
    zskt.load_model(teacher, arch="wrn-10-1")
    assert (tmp_path / "runs" / "shapes-wrn-10-1-seed0" / "checkpoint.pt").is_file()
    r = cli("--arch", "wrn-10-1", "--epochs", "1", "--max-steps", "2", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_author_format_teacher_kd_at_with_m_images(small_shapes, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = tmp_path / "author.pt"
    torch.save({"state_dict": zskt.wrn("wrn-10-1").state_dict()}, path)  # the author's format: weights only
    calls = []
    loss = tt.kd_at_loss
    monkeypatch.setattr(tt, "kd_at_loss", lambda *a, **k: calls.append(1) or loss(*a, **k))
    tt.main([*TINY, "--epochs", "1", "--distill-from", str(path), "--samples-per-class", "20",
             "--out", str(tmp_path / "kd")])
    assert "(200 train / 400 test images), KD+AT" in capsys.readouterr().out
    _, ckpt = zskt.load_model(tmp_path / "kd" / "model.pt", arch="wrn-10-1")
    assert ckpt["teacher"] == str(path) and ckpt["samples_per_class"] == 20
    assert ckpt["epoch"] == 4 and len(calls) == 4 * 3  # 800 / (10 * 20) = 4 epochs, 3 steps each (--max-steps)
    assert ckpt["mean"] == list(zskt.MEAN_STD["shapes"][0])


def test_folder_dataset_trains_and_stores_its_statistics(tmp_path):
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    pixels = []
    for split, n in (("train", 6), ("test", 3)):
        for name, rgb in colours.items():
            (tmp_path / "d" / split / name).mkdir(parents=True)
            for i in range(n):
                a = np.clip(np.array(rgb) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(tmp_path / "d" / split / name / f"{i}.png")
                if split == "train":
                    pixels.append(a.reshape(-1, 3) / 255)
    tt.main(["--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--arch", "wrn-10-1", "--epochs", "3",
             "--out", str(tmp_path / "run")])
    model, ckpt = zskt.load_model(tmp_path / "run" / "model.pt", num_classes=3)
    pixels = np.concatenate(pixels)
    assert np.allclose(ckpt["mean"], pixels.mean(0), atol=1e-5)
    assert np.allclose(ckpt["std"], pixels.std(0, ddof=1), atol=1e-5)
    x, y, _ = zskt.load_dataset("folder", "test", tmp_path / "d")
    assert ckpt["test_acc"] == pytest.approx(zskt.accuracy(model, x, y, ckpt["mean"], ckpt["std"]), abs=1e-6)


@pytest.mark.parametrize("stop_after", [3, 5])  # at an epoch boundary (3 steps per epoch) and inside one
def test_interrupted_and_resumed_run_ends_with_identical_weights(small_shapes, tmp_path, monkeypatch, stop_after):
    monkeypatch.setitem(tt.PRESETS["shapes"], "augment", True)  # resume must replay the augmentation too
    flags = [*TINY, "--epochs", "3"]
    tt.main([*flags, "--out", str(tmp_path / "a")])
    steps, step = [], torch.optim.SGD.step

    def interrupting_step(self, *a, **k):
        out = step(self, *a, **k)
        steps.append(1)
        if len(steps) == stop_after:
            signal.raise_signal(signal.SIGINT)  # the real signal path: StopOnSignal sets a flag
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", interrupting_step)
    with pytest.raises(SystemExit) as stopped:
        tt.main([*flags, "--out", str(tmp_path / "b")])
    assert stopped.value.code == 128 + signal.SIGINT
    saved = zskt.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == divmod(stop_after, 3)
    assert not (tmp_path / "b" / "model.pt").exists()
    with pytest.raises(zskt.UserError, match="--lr 0.1, not 0.5"):
        tt.main(["--resume", "--out", str(tmp_path / "b"), "--lr", "0.5"])
    tt.main(["--resume", "--out", str(tmp_path / "b")])
    a, b = state(tmp_path / "a" / "model.pt"), state(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = zskt.load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert not all(torch.equal(first[k], zskt.wrn("wrn-10-1").state_dict()[k]) for k in first)  # it trained


def test_non_finite_loss_stops_and_keeps_the_checkpoint(small_shapes, tmp_path):
    with pytest.raises(zskt.UserError, match=r"of epoch 1: loss = (nan|inf).*intact"):
        tt.main([*TINY, "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "run")])
    saved = zskt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_bad_inputs_are_one_line_errors(small_shapes, tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    five = tmp_path / "five.pt"
    torch.save(zskt.model_checkpoint(zskt.wrn("wrn-10-1", 5), "wrn-10-1", "shapes", (0.5,) * 3, (0.2,) * 3), five)
    cases = [(["--epochs", "0"], "--epochs must be positive"),
             (["--batch-size", "1"], "at least 2"),
             (["--lr", "-1"], "--lr must be positive"),
             (["--dataset", "mnist"], "unknown dataset"),
             (["--arch", "resnet-18"], "unknown architecture"),
             (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
             (["--distill-from", str(tmp_path / "missing.pt")], "no checkpoint file"),
             (["--distill-from", str(tmp_path / "corrupt.pt")], "corrupt"),
             (["--distill-from", str(five)], "5 classes"),
             (["--samples-per-class", "0"], "samples-per-class"),
             (["--samples-per-class", "1000"], "samples-per-class"),
             (["--resume"], "no checkpoint.pt")]
    for i, (flags, message) in enumerate(cases):
        with pytest.raises(zskt.UserError, match=message):
            tt.main([*TINY, "--epochs", "1", "--out", str(tmp_path / f"r{i}"), *flags])


def test_cli_error_exit_status(tmp_path):
    r = cli("--epochs", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --epochs must be positive\n"
    (tmp_path / "file").write_text("")  # a folder inside a file cannot be made, even by root
    r = cli(*TINY, "--epochs", "1", "--out", str(tmp_path / "file" / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot write to output directory" in r.stderr
