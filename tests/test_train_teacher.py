"""Tests of train_teacher.py: teachers, scratch students, few-shot KD+AT baselines and fine-tuning.
In-process runs use 800 shapes images (the small_shapes fixture); one subprocess run uses the real
data and the default paths."""
import argparse
import signal

import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings, strategies as st

import train_teacher as tt
import zskt
import zskt_models
import zskt_run
import zskt_shapes
from hand import hand_kd_at
from helpers import TT_TINY, cli, folder_data, run_main, save_network, shapes_slice, weights
from zskt_utils import Stopped, UserError, load_checkpoint, seed_everything


def params(m):
    return [p.detach().clone() for p in m.parameters()]


# --- the M-image subset ---------------------------------------------------------------------------

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
    one, other = tt.per_class_subset(labels, m, seed), tt.per_class_subset(labels, m, seed + 1)
    assert not torch.equal(one, other)


def test_per_class_subset_limits():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert tt.per_class_subset(labels, -1, 0).tolist() == list(range(8))
    for m in (0, 3, -2):  # class 1 has only 2 images
        with pytest.raises(UserError, match="samples-per-class"):
            tt.per_class_subset(labels, m, 0)


# --- the schedule ---------------------------------------------------------------------------------

def test_schedule_scales_epochs_and_milestones_like_the_author():
    assert tt.schedule(200, 50_000, 10, -1) == (200, [60, 120, 160])
    assert tt.schedule(100, 73_257, 10, -1) == (100, [30, 60, 80])
    # M = 200 on CIFAR-10: scale 25, as main.py of FewShotKnowledgeTransfer computes it
    assert tt.schedule(200, 50_000, 10, 200) == (5000, [1500, 3000, 4000])
    # A fine-tuning run on shapes (1 base epoch, M = 10): 30/60/80 % of 200 epochs, not epoch 0.
    assert tt.schedule(1, 20_000, 10, 10) == (200, [60, 120, 160])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 100), st.sampled_from([-1, 10, 25, 50, 100, 200]))
def test_schedule_milestones_are_30_60_80_percent_of_the_epochs(base, n_per_class, m):
    epochs, milestones = tt.schedule(base, 10 * max(n_per_class, m), 10, m)
    assert epochs >= base and milestones == sorted(milestones)
    for p, milestone in zip((0.3, 0.6, 0.8), milestones):
        assert abs(milestone - p * epochs) <= p + 1  # the milestone and the epochs: rounded down


def test_defaults_follow_the_author_code():
    # SVHN few-shot: the author's scripts scale iterations by M/100; CIFAR-10 and the paper by 1.
    assert tt.scale_n_iters("svhn", 10, "author") == 0.1
    assert tt.scale_n_iters("svhn", 10, "paper") == 1
    assert tt.scale_n_iters("cifar10", 10, "author") == 1.0 and tt.scale_n_iters("svhn", -1) == 1.0
    # Every SVHN M then trains int(100 * 73.257) epochs of M*10 images, as the author's main.py.
    for m in (10, 25, 50, 75, 100):
        assert tt.schedule(100, 73_257, 10, m, tt.scale_n_iters("svhn", m, "author"))[0] == 7325
    assert tt.schedule(100, 73_257, 10, 10, 1.0) == (73257, [21977, 43954, 58605])


@pytest.mark.parametrize("m,expected", [
    (10, 7_325 * 1),      # 100 images per epoch, one batch: fewer iterations, as the scripts
    (100, 7_325 * 8),     # 1,000 images: 7 batches of 128 and one of 104
    (200, 3_662 * 16),    # the Table 2 KD+AT student: no more than a full-data run
    (-1, 100 * 573)])     # all 73,257 images, 100 epochs: 57,300 iterations
def test_svhn_few_shot_iterations_never_exceed_a_full_data_run(m, expected):
    def steps(m, rule="author"):  # as main() computes them: epochs x batches per epoch
        epochs = tt.schedule(100, 73_257, 10, m, tt.scale_n_iters("svhn", m, rule))[0]
        return epochs * tt.steps_per_epoch(73_257 if m == -1 else 10 * m, 128)
    assert steps(m) == expected and steps(m) <= steps(-1) * 1.03
    if m != -1:  # the paper's rule: the same number of iterations for every M
        assert steps(m, "paper") >= 57_300 * 0.97


# --- augmentation ---------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8), st.booleans(), st.integers(0, 1000))
def test_crop_flip_equals_torchvision_on_padded_images(top, left, flip, seed):
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(seed))
    n = len(x)
    out = tt.crop_flip(x, torch.full((n,), top), torch.full((n,), left), torch.full((n,), flip))
    expected = TF.crop(TF.pad(x, [4], fill=0), top, left, 32, 32)
    assert torch.equal(out, TF.hflip(expected) if flip else expected)


def test_crop_flip_by_hand():
    x = torch.arange(2 * 3 * 32 * 32).view(2, 3, 32, 32).to(torch.uint8) | 1  # no zero pixels

    def z(v):
        return torch.full((2,), v)
    assert torch.equal(tt.crop_flip(x, z(4), z(4), z(False)), x)                      # centre crop
    assert torch.equal(tt.crop_flip(x, z(4), z(4), z(True)), torch.flip(x, [3]))      # mirror
    out = tt.crop_flip(x, z(0), z(8), z(False))  # window moved up by 4 and right by 4
    assert torch.equal(out[:, :, 4:, :28], x[:, :, :28, 4:])
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, 28:] == 0).all()  # black padding


def test_augment_draws_real_crops_and_flips():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    out = tt.augment(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, tt.augment(x, torch.Generator().manual_seed(5)))
    choices = [(t, l, f) for t in range(9) for l in range(9) for f in (False, True)]
    tops, lefts, flips = (torch.tensor(v) for v in zip(*choices))
    found = set()
    for i in range(len(x)):  # every output is one of the 162 crops/flips of its own input
        match = (tt.crop_flip(x[i].expand(len(choices), -1, -1, -1), tops, lefts, flips)
                 == out[i]).flatten(1).all(1)
        assert match.any()
        found.add(choices[int(match.nonzero()[0])])
    assert len(found) > 20 and {f for *_, f in found} == {False, True}


# --- the loss and the optimizer -------------------------------------------------------------------

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
        kwargs = {} if alpha == 0.9 else dict(alpha=alpha, temperature=T, beta=beta)  # paper's
        assert tt.kd_at_loss(s, t, y, s_acts, t_acts, **kwargs).item() == pytest.approx(expected,
                                                                                       rel=1e-5)


def test_the_optimizer_is_the_author_sgd():
    torch.manual_seed(0)
    model = zskt.wrn("wrn-10-1")
    opt = tt.sgd(model, 0.1)
    group = opt.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"], group["dampening"]) == \
        (0.9, 5e-4, False, 0)
    before = params(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # no gradient: weight decay alone shrinks every weight by (1 - lr * 5e-4)
    shrunk = [b * (1 - 0.1 * 5e-4) for b in before]
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(params(model), shrunk))


# --- what KD+AT and the teachers train on ---------------------------------------------------------

def test_kd_at_runs_the_teacher_in_eval_mode(small_shapes, tmp_path, monkeypatch):
    """The author's FewShot solver.py calls teacher.eval(): the teacher's logits come from its
    running statistics, which stay as trained. Every teacher forward of a KD+AT run, against the
    teacher loaded afresh from its file and run in eval mode on the same inputs."""
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1")
    with torch.no_grad():  # running statistics far from any batch's: train mode shows
        for m in teacher.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, .5)
                m.running_var.uniform_(.3, 3)
    path = save_network(teacher, "wrn-10-1", tmp_path / "teacher.pt")
    calls, loaded, load_model = [], [], zskt_models.load_model

    def load_and_watch(*a, **k):
        model, meta = load_model(*a, **k)
        model.register_forward_hook(lambda m, inputs, out: calls.append(
            (m.training, inputs[0].detach().clone(), out[0].detach().clone())))
        loaded.append(model)
        return model, meta
    monkeypatch.setattr(zskt_models, "load_model", load_and_watch)
    tt.main([*TT_TINY, "--epochs", "1", "--distill-from", str(path), "--out", str(tmp_path / "kd")])
    reference = load_model(path)[0].eval()
    assert [len(x) for _, x, _ in calls].count(32) == 3  # a batch per step (and 2 probe images)
    for training, x, logits in calls:
        with torch.no_grad():
            expected = reference(x.contiguous())[0]
        assert not training and torch.allclose(logits, expected, atol=1e-5, rtol=0)
    buffers = dict(loaded[0].named_buffers())
    assert all(torch.equal(v, buffers[k]) for k, v in reference.named_buffers())


def test_each_seed_trains_on_its_own_m_image_subset(small_shapes, tmp_path, monkeypatch):
    """The author's get_indices_for_n_images_per_class draws "a different subset for each seed":
    what a run trains on is the seed's subset, M images of each class, and two seeds differ."""
    trained = {}
    monkeypatch.setattr(tt, "fit", lambda args, device, teacher, resumed, data, *a:
                        trained.setdefault(args.seed, data))
    for seed in (0, 1):
        tt.main([*TT_TINY, "--samples-per-class", "3", "--seed", str(seed), "--out",
                 str(tmp_path / f"seed{seed}")])
    x, y, _ = shapes_slice()["train"]
    for seed, (images, labels) in trained.items():
        subset = tt.per_class_subset(y, 3, seed)
        assert torch.equal(images, x[subset]) and torch.equal(labels, y[subset])
        assert torch.bincount(labels, minlength=10).tolist() == [3] * 10
    assert not torch.equal(trained[0][0], trained[1][0])


class Recorder(torch.nn.Module):
    """A classifier that records which images it sees: image i holds the pixel value i."""

    def __init__(self):
        super().__init__()
        self.fc, self.seen = torch.nn.Linear(12, 2), []

    def forward(self, x):
        self.seen.append((x[:, 0, 0, 0] * 255).round().long())
        return self.fc(x.flatten(1)), ()


def test_every_epoch_draws_a_new_batch_order_and_a_resume_the_same_one():
    """A shuffling DataLoader (the author's utils/datasets.py) draws a new order each epoch: each
    epoch sees every image once, the orders of epochs and of seeds differ, and an epoch started
    again (a resume) repeats its own order."""
    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    data = (images, torch.arange(n) % 2)

    def order(seed, epoch):
        model = Recorder()
        args = argparse.Namespace(batch_size=8, max_steps=None, seed=seed, dataset="shapes",
                                  amp=False, mean=[0.0] * 3, std=[1.0] * 3, out="unused")
        tt.train_epoch(model, None, torch.optim.SGD(model.parameters(), lr=0.0), data, args,
                       epoch)
        return torch.cat(model.seen).tolist()
    orders = [order(0, epoch) for epoch in range(4)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4
    assert order(0, 2) == orders[2] and order(1, 0) != orders[0]


def test_model_files_store_their_classes_and_other_classes_are_refused(tmp_path, monkeypatch,
                                                                      capsys):
    """model.pt and the teacher copy name the classes (the class folders, sorted); a KD+AT teacher
    or a network to fine-tune that names other classes than the data's is refused, naming both,
    even where the number of classes is the same, and leaves no run directory."""
    monkeypatch.chdir(tmp_path)  # the default --out and the teacher copy land here
    folder_data(tmp_path / "colours")
    tiny = ["--dataset", "folder", "--arch", "wrn-10-1", "--epochs", "1", "--batch-size", "8",
            "--max-steps", "1"]
    tt.main([*tiny, "--data-dir", "colours"])
    copy = zskt_run.default_teacher_path("folder", "wrn-10-1", "colours")
    model = next(tmp_path.glob("runs/*/model.pt"))
    for path in (model, copy):
        saved = torch.load(path, weights_only=True)
        assert saved["classes"] == sorted(d.name for d in (tmp_path / "colours/train").iterdir())
    for name in ("cat", "dog", "fox"):  # three classes too
        for split in ("train", "test"):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            for f in (tmp_path / "colours" / split / "red").iterdir():
                (tmp_path / "pets" / split / name / f.name).write_bytes(f.read_bytes())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    for flag in ("--distill-from", "--finetune-from"):
        code, err = run_main([*tiny, "--data-dir", "pets", "--samples-per-class", "2", flag,
                              str(copy)], capsys, tt.main)
        assert code == 2 and err == (f"error: {copy.resolve()} was trained on the classes blue, "
                                     f"green, red, but the data has cat, dog, fox; pass the data "
                                     f"it was trained on, or another file")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    tt.main([*tiny, "--data-dir", "colours", "--samples-per-class", "2", "--distill-from",
             str(copy), "--out", "kd"])  # the same classes: distilled, and named again
    assert torch.load("kd/model.pt", weights_only=True)["classes"] == ["blue", "green", "red"]


# --- runs -----------------------------------------------------------------------------------------

def test_a_run_writes_a_teacher_that_zskt_loads(small_shapes, tmp_path):
    tt.main([*TT_TINY, "--epochs", "1", "--out", str(tmp_path / "run")])
    model, ckpt = zskt_models.load_model(tmp_path / "run" / "model.pt", arch="wrn-10-1",
                                         num_classes=10)
    assert {"dataset": "shapes", "arch": "wrn-10-1", "epoch": 1, "seed": 0}.items() <= ckpt.items()
    assert ckpt["classes"] == list(zskt_shapes.CLASSES)
    assert ckpt["mean"] == list(zskt.MEAN_STD["shapes"][0])
    assert ckpt["std"] == list(zskt.MEAN_STD["shapes"][1])
    x, y, classes = shapes_slice()["test"]
    test = zskt.TestSet(x, y, classes, ckpt["mean"], ckpt["std"])
    assert ckpt["test_acc"] == pytest.approx(zskt.accuracy(model, test), abs=1e-6)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_cli_default_paths_and_no_silent_overwrite(tmp_path):
    r = cli("train_teacher.py", "--arch", "wrn-10-1", "--epochs", "1", "--max-steps", "2",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    teacher = tmp_path / zskt_run.default_teacher_path("shapes", "wrn-10-1")
    zskt_models.load_model(teacher, arch="wrn-10-1")
    assert (tmp_path / "runs" / "shapes-wrn-10-1-seed0" / "checkpoint.pt").is_file()
    assert "1 epoch (2 steps)," in r.stdout  # not "1 epochs"
    r = cli("train_teacher.py", "--arch", "wrn-10-1", "--epochs", "1", "--max-steps", "2",
            cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--overwrite" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_finished_run_is_reported_not_redone(small_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    tt.main([*TT_TINY, "--epochs", "2", "--out", str(out)])
    files = ("model.pt", "checkpoint.pt", "summary.json")
    before = {f: (out / f).stat().st_mtime_ns for f in files}
    capsys.readouterr()
    tt.main(["--resume", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "finished earlier: wrn-10-1, test accuracy" in printed and "2 epochs" in printed
    assert "resuming" not in printed
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before  # nothing rewritten


def test_author_format_teacher_kd_at_with_m_images(small_shapes, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    path = tmp_path / "author.pt"
    torch.save({"state_dict": zskt.wrn("wrn-10-1").state_dict()}, path)  # the author's format
    calls, loss = [], tt.kd_at_loss
    monkeypatch.setattr(tt, "kd_at_loss", lambda *a, **k: calls.append(k["beta"]) or loss(*a, **k))
    tt.main([*TT_TINY, "--epochs", "1", "--distill-from", str(path), "--samples-per-class", "20",
             "--out", str(tmp_path / "kd")])
    assert "(200 train / 400 test images), KD+AT" in capsys.readouterr().out
    _, ckpt = zskt_models.load_model(tmp_path / "kd" / "model.pt", arch="wrn-10-1")
    assert ckpt["teacher"] == str(path) and ckpt["samples_per_class"] == 20
    assert ckpt["epoch"] == 4 and len(calls) == 4 * 3  # 800 / (10 * 20) = 4 epochs, 3 steps each
    assert set(calls) == {1000.0}  # the author's beta for WideResNets
    assert ckpt["mean"] == list(zskt.MEAN_STD["shapes"][0])


def test_folder_dataset_trains_and_stores_its_statistics(tmp_path):
    import numpy as np
    folder_data(tmp_path / "d", size=32)
    tt.main(["--dataset", "folder", "--data-dir", str(tmp_path / "d"), "--arch", "wrn-10-1",
             "--epochs", "3", "--out", str(tmp_path / "run")])
    model, ckpt = zskt_models.load_model(tmp_path / "run" / "model.pt", num_classes=3)
    x, y, classes = zskt.load_dataset("folder", "train", tmp_path / "d")
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy() / 255
    assert np.allclose(ckpt["mean"], pixels.mean(0), atol=1e-5)
    assert np.allclose(ckpt["std"], pixels.std(0, ddof=1), atol=1e-5)
    test = zskt.TestSet(*zskt.load_dataset("folder", "test", tmp_path / "d"), ckpt["mean"],
                        ckpt["std"])
    assert ckpt["test_acc"] == pytest.approx(zskt.accuracy(model, test), abs=1e-6)


# 10 epochs of 3 steps: the lr is 0.1 for 4 epochs, then 0.02 for 3, so a resume that does not
# restore the scheduler (or restores it one epoch off) ends with other weights.
@pytest.mark.parametrize("stop_after", [12, 14])  # at an epoch boundary at a decay, inside an epoch
def test_interrupted_and_resumed_run_ends_with_identical_weights(small_shapes, tmp_path,
                                                                 monkeypatch, stop_after):
    monkeypatch.setitem(tt.PRESETS["shapes"], "augment", True)  # resume replays augmentation too
    flags = [*TT_TINY, "--epochs", "10"]
    tt.main([*flags, "--out", str(tmp_path / "a")])
    steps, step = [], torch.optim.SGD.step

    def interrupting_step(self, *a, **k):
        out = step(self, *a, **k)
        steps.append(1)
        if len(steps) == stop_after:
            signal.raise_signal(signal.SIGINT)  # the real signal path: StopOnSignal sets a flag
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", interrupting_step)
    with pytest.raises(Stopped) as stopped:
        tt.main([*flags, "--out", str(tmp_path / "b")])
    assert stopped.value.status == 128 + signal.SIGINT
    saved = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == divmod(stop_after, 3)
    assert not (tmp_path / "b" / "model.pt").exists()
    with pytest.raises(UserError, match="--lr 0.1, not 0.5"):
        tt.main(["--resume", "--out", str(tmp_path / "b"), "--lr", "0.5"])
    tt.main(["--resume", "--out", str(tmp_path / "b")])
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    seed_everything(0)  # the initialisation train_teacher.py starts from
    init = zskt.wrn("wrn-10-1").state_dict()
    assert not all(torch.equal(first[k], init[k]) for k in first)  # it trained


def test_non_finite_loss_stops_and_keeps_the_checkpoint(small_shapes, tmp_path):
    with pytest.raises(UserError, match=r"of epoch 1: loss = (nan|inf).*intact"):
        tt.main([*TT_TINY, "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "run")])
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_bad_inputs_are_one_line_errors(small_shapes, tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    five = tmp_path / "five.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1", 5), "wrn-10-1", "shapes",
                                            (0.5,) * 3, (0.2,) * 3), five)
    device = ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"]
    cases = [(["--epochs", "0"], "--epochs must be positive"),
             (["--batch-size", "1"], "at least 2"),
             (["--lr", "-1"], "--lr must be a positive number"),
             (["--lr", "inf"], "--lr must be a positive number"),
             (["--seed", "-1"], "seeds must be whole numbers from 0 to 2\\*\\*32 - 1"),
             (["--dataset", "mnist"], "unknown dataset"),
             (["--arch", "resnet-18"], "unknown architecture"),
             (device, "device"),
             (["--distill-from", str(tmp_path / "missing.pt")], "no checkpoint file"),
             (["--distill-from", str(tmp_path / "corrupt.pt")], "corrupt"),
             (["--distill-from", str(five)], "5 classes"),
             (["--samples-per-class", "0"], "samples-per-class"),
             (["--samples-per-class", "1000"], "samples-per-class"),
             (["--resume"], "no checkpoint.pt")]
    for i, (flags, message) in enumerate(cases):
        with pytest.raises(UserError, match=message):
            tt.main([*TT_TINY, "--epochs", "1", "--out", str(tmp_path / f"r{i}"), *flags])


def test_cli_error_exit_status(tmp_path):
    r = cli("train_teacher.py", "--epochs", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --epochs must be positive\n"
    (tmp_path / "file").write_text("")  # a folder inside a file cannot be made, even by root
    r = cli("train_teacher.py", *TT_TINY, "--epochs", "1", "--out", str(tmp_path / "file" / "run"),
            cwd=tmp_path)
    assert r.returncode == 2 and "cannot write to output directory" in r.stderr


def test_train_teacher_prints_its_real_schedule(small_shapes, tmp_path, capsys, monkeypatch):
    lrs, train_epoch = [], tt.train_epoch
    monkeypatch.setattr(tt, "train_epoch", lambda model, teacher, optimizer, *a:
                        lrs.append(optimizer.param_groups[0]["lr"]) or
                        train_epoch(model, teacher, optimizer, *a))
    tt.main([*TT_TINY, "--epochs", "4", "--batch-size", "5000", "--out", str(tmp_path / "r")])
    # 4 epochs: milestones 1, 2, 3, each taking effect one epoch late: drops after epochs 2 and 3.
    assert "batch 800, lr 0.1 (x0.2 after epochs 2, 3)" in capsys.readouterr().out
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.004])  # the lr of each epoch, as used
