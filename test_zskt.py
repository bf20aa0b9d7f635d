"""Tests of zskt.py, train_teacher.py and benchmark.py: shapes, gradients, equivalences, hand computations,
runs, resume, bad input. `python -m pytest -q`"""
import copy
import csv
import functools
import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hypothesis import given, settings, strategies as st
from PIL import Image

import benchmark
import train_teacher as tt
import zskt

FAST = settings(max_examples=10, deadline=None)


def tiny_setup(seed=0, teacher="wrn-10-1", student="wrn-10-1", **cfg):
    torch.manual_seed(seed)
    t = zskt.wrn(teacher).eval().requires_grad_(False)
    s, g = zskt.wrn(student), zskt.Generator(16)
    cfg = zskt.Config(**{"batch_size": 8, "z_dim": 16, "n_s": 2, **cfg})
    return t, s, g, torch.optim.Adam(s.parameters(), cfg.lr_student), torch.optim.Adam(g.parameters(), cfg.lr_generator), cfg


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b, atol=0.0):
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a, b))


# --- data ---------------------------------------------------------------------------------------

def test_shapes_is_deterministic_balanced_and_split():
    x, y = zskt.make_shapes(200, seed=3)
    x2, y2 = zskt.make_shapes(200, seed=3)
    assert x.shape == (200, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert zskt.make_shapes(10, seed=3, size=32)[0].shape == (10, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    assert not torch.equal(zskt.make_shapes(200, seed=4)[0], x)


def test_shapes_classes_are_not_colour_separable():
    # Classes differ by shape or texture: a nearest-class-mean classifier on an image's mean colour
    # and brightness spread must stay near chance (10%).
    x, y = zskt.make_shapes(4000, seed=0)
    f = torch.cat([x.float().mean((2, 3)), x.float().std((2, 3))], 1)
    centres = torch.stack([f[:2000][y[:2000] == k].mean(0) for k in range(10)])
    acc = (torch.cdist(f[2000:], centres).argmin(1) == y[2000:]).float().mean()
    assert acc < 0.2


# --- models -------------------------------------------------------------------------------------

@FAST
@given(n=st.integers(1, 2), k=st.integers(1, 2), batch=st.integers(2, 3), classes=st.integers(2, 12),
       size=st.sampled_from([16, 32]))
def test_wrn_output_and_activation_shapes(n, k, batch, classes, size):
    logits, (a1, a2, a3) = zskt.WideResNet(6 * n + 4, k, classes)(torch.randn(batch, 3, size, size))
    assert logits.shape == (batch, classes)
    assert a1.shape == (batch, 16 * k, size, size) and a2.shape == (batch, 32 * k, size // 2, size // 2)
    assert a3.shape == (batch, 64 * k, size // 4, size // 4)


@pytest.mark.parametrize("name,count", [("wrn-16-1", 175_066), ("wrn-16-2", 691_674),
                                        ("wrn-40-1", 563_930), ("wrn-40-2", 2_243_546)])
def test_parameter_counts(name, count):
    assert sum(p.numel() for p in zskt.wrn(name).parameters()) == count


@pytest.mark.parametrize("size,count", [(32, 1_051_145), (16, 1_051_145 - 101 * 128 * (8 * 8 - 4 * 4))])
def test_generator_parameter_count_and_output(size, count):
    g = zskt.Generator(100, size)  # 16: only the linear layer shrinks, to 128x4x4 outputs
    assert sum(p.numel() for p in g.parameters()) == count
    x = g(torch.randn(16, 100))
    assert x.shape == (16, 3, size, size)
    # The affine-free start of the final BN: each channel is ~zero-mean, unit-variance (normalised space).
    assert x.mean((0, 2, 3)).abs().max() < 1e-4 and (x.std((0, 2, 3)) - 1).abs().max() < 1e-2


def test_state_dict_layout_matches_author_checkpoints():
    sd = zskt.wrn("wrn-16-2").state_dict()
    expected = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                "bn1.num_batches_tracked", "fc.weight", "fc.bias"}
    for g, (c_in, c_out) in enumerate([(16, 32), (32, 64), (64, 128)], 1):
        for i in range(2):
            p = f"block{g}.layer.{i}."
            expected |= {p + "conv1.weight", p + "conv2.weight"}
            expected |= {p + bn + s for bn in ("bn1.", "bn2.")
                         for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
            if i == 0:
                expected.add(p + "convShortcut.weight")
                assert sd[p + "convShortcut.weight"].shape == (c_out, c_in, 1, 1)
    assert set(sd) == expected
    assert "block1.layer.0.convShortcut.weight" not in zskt.wrn("wrn-16-1").state_dict()


@pytest.mark.parametrize("name", ["wrn-10-1", "wrn-16-2", "wrn-40-1"])
def test_infer_arch_reads_name_and_classes(name):
    assert zskt.infer_arch(zskt.wrn(name, 7).state_dict()) == (name, 7)


# --- losses -------------------------------------------------------------------------------------

@FAST
@given(b=st.integers(1, 4), c=st.integers(1, 5), h=st.integers(1, 6), scale=st.floats(0.1, 10))
def test_attention_map_unit_norm_and_scale_invariant(b, c, h, scale):
    a = torch.randn(b, c, h, h) + 0.1
    m = zskt.attention_map(a)
    assert m.shape == (b, h * h)
    assert torch.allclose(m.norm(dim=1), torch.ones(b), atol=1e-5)
    assert torch.allclose(zskt.attention_map(scale * a), m, atol=1e-5)


@FAST
@given(seed=st.integers(0, 1000))
def test_attention_loss_zero_iff_maps_equal(seed):
    torch.manual_seed(seed)
    acts = [torch.randn(3, 4, s, s) for s in (8, 4, 2)]
    other = [a.clone() for a in acts]
    other[1][:, :, 0, 0] += 3.0  # moves attention towards one position of one layer
    assert zskt.attention_loss(acts, [a.clone() for a in acts]) == 0
    assert zskt.attention_loss(acts, other) > 1e-4


def test_attention_loss_against_hand_computation():
    s, t = torch.tensor([[[[1., 2.], [0., 0.]]]]), torch.tensor([[[[0., 0.], [0., 3.]]]])
    ms, mt = np.array([1, 4, 0, 0]) / np.sqrt(17), np.array([0, 0, 0, 9]) / 9.0
    assert zskt.attention_loss([s], [t]).item() == pytest.approx(((ms - mt) ** 2).mean(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:reduction")
def test_kl_divergence_against_hand_computation():
    s, t = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]), torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    ps, pt = np.exp(s.numpy()) / np.exp(s.numpy()).sum(1, keepdims=True), np.exp(t.numpy()) / np.exp(t.numpy()).sum(1, keepdims=True)
    per_example = (pt * np.log(pt / ps)).sum(1)
    assert zskt.kl_divergence(s, t).item() == pytest.approx(per_example.mean() / 3, rel=1e-5)  # / C (§4.1)
    # ...which is F.kl_div's default 'mean' reduction, as in the author's code.
    assert zskt.kl_divergence(s, t).item() == pytest.approx(F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="mean").item(), rel=1e-5)
    assert zskt.generator_loss(s, t).item() == -zskt.kl_divergence(s, t).item()


@FAST
@given(seed=st.integers(0, 10_000), shift=st.floats(-50, 50), temperature=st.floats(0.5, 8))
def test_kl_nonnegative_and_zero_for_shifted_logits(seed, shift, temperature):
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(5, 10, generator=g), 3 * torch.randn(5, 10, generator=g)
    assert zskt.kl_divergence(s, t, temperature) >= 0
    assert abs(zskt.kl_divergence(t + shift, t, temperature).item()) < 1e-5


def test_student_loss_is_kl_plus_beta_attention():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    sa, ta = [torch.randn(4, 2, 4, 4)], [torch.randn(4, 2, 4, 4)]
    expected = zskt.kl_divergence(s, t) + 250.0 * zskt.attention_loss(sa, ta)
    assert zskt.student_loss(s, t, sa, ta, beta=250.0).item() == pytest.approx(expected.item(), rel=1e-6)


# --- Algorithm 1 --------------------------------------------------------------------------------

def test_generator_step_updates_only_the_generator():
    t, s, g, opt_s, opt_g, cfg = tiny_setup(n_s=0)
    t0, s0, g0 = copy.deepcopy(t.state_dict()), params(s), params(g)
    zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters() if p.dim() > 1)
    assert all(not same([a], [b]) for a, b in zip(g0, params(g)))  # every generator tensor moved
    assert same(s0, params(s)) and all(p.grad is None for p in s.parameters())
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in t0.items()) and all(p.grad is None for p in t.parameters())


def test_student_steps_update_only_the_student():
    # The same iteration with and without student steps leaves the generator identical.
    runs = []
    for n_s in (0, 3):
        t, s, g, opt_s, opt_g, cfg = tiny_setup(n_s=n_s)
        s0 = params(s)
        torch.manual_seed(1)
        zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
        runs.append((params(g), params(s), s0))
    assert same(runs[0][0], runs[1][0])
    assert same(runs[0][1], runs[0][2]) and all(not same([a], [b]) for a, b in zip(runs[1][1], runs[1][2]))


def test_teacher_never_changes_and_gets_no_gradients():
    t, s, g, opt_s, opt_g, cfg = tiny_setup()
    before = copy.deepcopy(t.state_dict())
    for _ in range(2):
        zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert not t.training and all(p.grad is None for p in t.parameters())
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in before.items())


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_iteration_matches_the_author_loop_structure(channels_last, float64):
    """Our loop (no T/S weight grads in the G step, detached pseudo batch, teacher outputs once)
    gives the same student and generator as the author's structure from the same seed. In float64
    and with SGD, so that float noise (different conv kernels) cannot hide a real difference:
    Adam would turn noise in near-zero gradients (conv biases before BN) into lr-sized steps."""
    results = []
    for fn in (zskt.zero_shot_iteration, benchmark.author_zero_shot_iteration):
        t, s, g, _, _, cfg = tiny_setup(n_s=3)
        if fn is benchmark.author_zero_shot_iteration:
            t.requires_grad_(True)  # the author keeps teacher gradients on
        elif channels_last:
            for m in (t, s, g):
                m.to(memory_format=torch.channels_last)
        opt_s, opt_g = torch.optim.SGD(s.parameters(), 0.05), torch.optim.SGD(g.parameters(), 0.05)
        torch.manual_seed(7)
        losses = [fn(t, s, g, opt_s, opt_g, cfg) for _ in range(2)]
        results.append((params(s), params(g), [b.clone() for b in s.buffers()], losses))
    (s1, g1, b1, l1), (s2, g2, b2, l2) = results
    # Real differences (a missing step, another pseudo batch) are ~1e-3; channels_last kernels
    # leave ~1e-8 in float64 after BatchNorm's cancellations.
    assert same(s1, s2, atol=1e-6) and same(g1, g2, atol=1e-6) and same(b1, b2, atol=1e-6)
    assert l1 == pytest.approx(l2, rel=1e-6)
    assert not same(s1, params(tiny_setup()[1]), atol=1e-3)  # training happened


# --- transition curves and MTE ------------------------------------------------------------------

def small_pair(seed=0, classes=4):
    torch.manual_seed(seed)
    return zskt.WideResNet(10, 1, classes).eval(), zskt.WideResNet(10, 1, classes).eval()


@pytest.mark.parametrize("use_labels", [False, True])
def test_batched_transition_curves_equal_one_image_at_a_time(use_labels):
    a, b = small_pair()
    x, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    kw = dict(steps=4, step_size=0.5, labels=labels if use_labels else None)
    batched = zskt.transition_curves(a, b, x, chunk_size=5, **kw)  # chunks cut across images
    loop = benchmark.author_transition_curves(a, b, x, **kw)
    for p, q in zip(batched, loop):
        assert p.shape == (3, 3, 4)
        assert torch.allclose(p, q, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0][..., 0], batched[0][..., -1])  # the images really moved


def test_transition_curves_first_step_is_clean_and_targets_follow_author_order():
    a, b = small_pair(classes=5)
    x = torch.randn(2, 3, 32, 32)
    p_a, p_b = zskt.transition_curves(a, b, x, steps=2)
    with torch.no_grad():
        pa, pb = a(x)[0].softmax(1), b(x)[0].softmax(1)
    i = pa.argmax(1)
    targets = (i[:, None] + torch.arange(1, 5)) % 5
    assert torch.allclose(p_a[..., 0], pa.gather(1, targets), atol=1e-6)
    assert torch.allclose(p_b[..., 0], pb.gather(1, targets), atol=1e-6)


def test_mte_of_a_network_against_itself_is_zero():
    a, _ = small_pair()
    p_s, p_o = zskt.transition_curves(a, a, torch.randn(2, 3, 32, 32), steps=3)
    assert zskt.mean_transition_error(p_s, p_o) == 0.0


def test_mte_hand_computation():
    p = np.array([[[0.1, 0.5, 0.9], [0.2, 0.2, 0.2]]])
    q = np.array([[[0.1, 0.3, 0.4], [0.0, 0.2, 0.6]]])
    assert zskt.mean_transition_error(p, q) == pytest.approx((0 + .2 + .5 + .2 + 0 + .4) / 6)


def test_agreeing_images_only_returns_images_both_networks_agree_on():
    a, b = small_pair(classes=3)
    images, labels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 3, (40,))
    mean, std = zskt.MEAN_STD["cifar10"]
    x, y, shared = zskt.agreeing_images(a, b, images, labels, mean, std, n=10, seed=1)
    with torch.no_grad():
        assert torch.equal(a(x)[0].argmax(1), shared) and torch.equal(b(x)[0].argmax(1), shared)
    agree_total = (zskt.predict(a, images, mean, std) == zskt.predict(b, images, mean, std)).sum()
    assert len(x) == min(10, int(agree_total)) and len(y) == len(x)


# --- runs: outputs, checkpoints, resume, errors --------------------------------------------------

@pytest.fixture(scope="module")
def shapes_test():
    x, y, _ = zskt.load_dataset("shapes", "test")
    return x[:200], y[:200]


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(zskt.model_checkpoint(zskt.wrn("wrn-10-1"), "wrn-10-1", "shapes", *zskt.MEAN_STD["shapes"]), path)
    return path


TINY = ["--student", "wrn-10-1", "--batch-size", "8", "--n-s", "2", "--z-dim", "16", "--log-every", "2",
        "--mte-images", "3", "--mte-steps", "2"]


def tiny_run(cfg_overrides, shapes_test, out, resume=False):
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1")
    cfg = zskt.make_config("shapes", teacher="wrn-10-1", student="wrn-10-1", batch_size=8, z_dim=16, n_s=2,
                           log_every=2, checkpoint_every=2, mte_images=3, mte_steps=2, **cfg_overrides)
    return zskt.train_zero_shot(cfg, teacher, *shapes_test, *zskt.MEAN_STD["shapes"], out, resume=resume, log=lambda s: None)


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, shapes_test, monkeypatch):
    tiny_run({"iterations": 5}, shapes_test, tmp_path / "a")
    calls, original = [0], zskt.zero_shot_iteration

    def ctrl_c_during_third(*args):  # a real SIGINT arrives in the middle of iteration 3
        calls[0] += 1
        if calls[0] == 3:
            import os, signal
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args)

    monkeypatch.setattr(zskt, "zero_shot_iteration", ctrl_c_during_third)
    with pytest.raises(KeyboardInterrupt, match="after iteration 3"):
        tiny_run({"iterations": 5}, shapes_test, tmp_path / "b")
    assert zskt.load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == 3
    monkeypatch.setattr(zskt, "zero_shot_iteration", original)
    tiny_run({"iterations": 5}, shapes_test, tmp_path / "b", resume=True)
    a, b = (zskt.load_checkpoint(tmp_path / d / "student.pt")["state_dict"] for d in "ab")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0) for k in a)
    ga, gb = (zskt.load_checkpoint(tmp_path / d / "checkpoint.pt")["generator"] for d in "ab")
    assert all(torch.allclose(ga[k].float(), gb[k].float(), atol=1e-6, rtol=0) for k in ga)
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["iteration", "2", "4", "5"]


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    zskt.save_atomic({"iteration": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        zskt.save_atomic({"iteration": 2, "w": torch.zeros(3)}, path)
    assert zskt.load_checkpoint(path)["iteration"] == 1


def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_checkpoint(tmp_path, shapes_test, monkeypatch):
    calls, original = [0], zskt.kl_divergence

    def nan_at_iteration_3(*args):  # 1 generator + 2 student losses per iteration
        calls[0] += 1
        return original(*args) * (float("nan") if calls[0] > 6 else 1.0)

    monkeypatch.setattr(zskt, "kl_divergence", nan_at_iteration_3)
    with pytest.raises(zskt.UserError, match="iteration 3: loss_generator = nan"):
        tiny_run({"iterations": 5}, shapes_test, tmp_path)
    assert zskt.load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def test_cli_run_writes_every_output(tmp_path, teacher_file):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "zskt.py", "--teacher-checkpoint", str(teacher_file), "--iterations", "3",
                        "--out", str(out), *TINY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    plot = ["transition.png"] if importlib.util.find_spec("matplotlib") else []  # optional dependency
    for name in ["metrics.csv", "samples_000002.png", "samples_000003.png", "student.pt", "checkpoint.pt",
                 "summary.json", "curves.npz", "config.json", *plot]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("dataset", "teacher", "student", "iterations", "seed", "device", "teacher_test_acc",
                "student_test_acc", "seconds", "mte"):
        assert key in summary
    assert summary["teacher"] == "wrn-10-1" and summary["iterations"] == 3
    assert zskt.load_model(out / "student.pt", "wrn-10-1", 10)[1]["test_acc"] == summary["student_test_acc"]
    assert np.load(out / "curves.npz")["p_stepped"].shape == (3, 9, 2)
    assert "student / teacher ratio" in r.stdout and "mean transition error" in r.stdout


def test_seeds_run_one_after_another_and_aggregate(tmp_path, teacher_file, capsys):
    zskt.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--seeds", "0", "1",
               "--out", str(tmp_path / "runs"), *TINY])
    accs = [json.loads((tmp_path / "runs" / f"seed{s}" / "summary.json").read_text())["student_test_acc"] for s in (0, 1)]
    agg = json.loads((tmp_path / "runs" / "aggregate.json").read_text())
    assert agg["student_test_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert agg["student_test_acc"]["std"] == pytest.approx(np.std(accs))  # population std, as the paper


def test_author_format_checkpoints_load(tmp_path):
    net = zskt.wrn("wrn-16-2")
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, tmp_path / "dp.pt")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "plain.pt")
    for f in ("dp.pt", "plain.pt"):
        loaded, _ = zskt.load_model(tmp_path / f, "wrn-16-2", 10)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def run_main(args, capsys):
    with pytest.raises(SystemExit) as e:
        zskt.run_cli(lambda: zskt.main(args))
    err = capsys.readouterr().err.strip()
    return e.value.code, err


class Pickled:  # a class instance: only full unpickling could load it
    pass


@pytest.mark.parametrize("case,args,message", [
    ("arch", ["--student", "resnet-18"], "unknown architecture 'resnet-18'"),
    ("iterations", ["--iterations", "0"], "--iterations must be at least 1"),
    ("batch", ["--batch-size", "1"], "BatchNorm needs two examples"),
    ("beta", ["--beta", "-1"], "--beta must be at least 0"),
    ("n_s", ["--n-s", "0"], "--n-s must be at least 1"),
    ("device", ["--device", "tpu"], "unknown device 'tpu'"),
    ("cuda", ["--device", "cuda"], "CUDA is not available"),
    ("mismatch", ["--teacher", "wrn-16-1"], "holds a wrn-10-1 with 10 classes, but a wrn-16-1"),
    ("classes", [], "holds a wrn-10-1 with 5 classes, but a wrn-10-1 with 10 classes"),
    ("corrupt", [], "is truncated or corrupt"),
    ("pickle", [], "holds pickled Python objects"),
    ("unwritable", [], "cannot write to output directory"),
    ("exists", [], "already holds files; pass --resume"),
    ("resume", ["--resume", "--batch-size", "4"], "batch_size=8 (saved) vs 4 (given)"),
])
def test_bad_input_gives_one_sentence_and_exit_2(case, args, message, tmp_path, teacher_file, capsys, monkeypatch):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    if case == "classes":
        torch.save(zskt.model_checkpoint(zskt.wrn("wrn-10-1", 5), "wrn-10-1", "shapes", (0,) * 3, (1,) * 3), teacher_file)
    if case == "corrupt":
        teacher_file.write_bytes(teacher_file.read_bytes()[:5000])
    if case == "pickle":
        torch.save({"state_dict": zskt.wrn("wrn-10-1").state_dict(), "extra": Pickled()}, teacher_file)
    if case == "unwritable":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    if case in ("exists", "resume"):
        zskt.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out", str(out), *TINY])
        capsys.readouterr()
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out", str(out), *TINY, *args], capsys)
    assert code == 2 and message in err, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_missing_teacher_names_the_command_that_creates_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "python train_teacher.py --dataset shapes --arch wrn-16-1" in err


def test_missing_dataset_says_where_to_put_it(tmp_path, teacher_file, capsys):
    code, err = run_main(["--dataset", "cifar10", "--teacher-checkpoint", str(teacher_file), "--data-dir",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "cifar-10-python.tar.gz" in err and "nowhere" in err
    code, err = run_main(["--dataset", "imagenet"], capsys)
    assert code == 2 and "invalid choice: 'imagenet'" in err


# --- train_teacher.py: teachers, scratch students, KD+AT baselines ---------------------------------
# In-process runs replace zskt.load_dataset("shapes") by a slice of the real shapes test split, so
# they take seconds; one subprocess run uses the real data and the default paths.

HERE = Path(__file__).resolve().parent
REAL_LOAD = zskt.load_dataset
TT_TINY = ["--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "3"]


@functools.lru_cache(maxsize=None)
def shapes_slice():
    x, y, names = REAL_LOAD("shapes", "test")  # 2,000 images: quicker to make than the train split
    return {"train": (x[:800], y[:800], names), "test": (x[800:1200], y[800:1200], names)}


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(zskt, "load_dataset", lambda name, split, data_dir="./data":
                        shapes_slice()[split] if name == "shapes" else REAL_LOAD(name, split, data_dir))


def weights(path):
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
    tt.main([*TT_TINY, "--epochs", "1", "--out", str(tmp_path / "run")])
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
    tt.main([*TT_TINY, "--epochs", "1", "--distill-from", str(path), "--samples-per-class", "20",
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
    flags = [*TT_TINY, "--epochs", "3"]
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
    a, b = weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = zskt.load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    zskt.seed_everything(0)  # the initialisation train_teacher.py starts from
    init = zskt.wrn("wrn-10-1").state_dict()
    assert not all(torch.equal(first[k], init[k]) for k in first)  # it trained


def test_non_finite_loss_stops_and_keeps_the_checkpoint(small_shapes, tmp_path):
    with pytest.raises(zskt.UserError, match=r"of epoch 1: loss = (nan|inf).*intact"):
        tt.main([*TT_TINY, "--epochs", "2", "--lr", "1e30", "--out", str(tmp_path / "run")])
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
            tt.main([*TT_TINY, "--epochs", "1", "--out", str(tmp_path / f"r{i}"), *flags])


def test_cli_error_exit_status(tmp_path):
    r = cli("--epochs", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "error: --epochs must be positive\n"
    (tmp_path / "file").write_text("")  # a folder inside a file cannot be made, even by root
    r = cli(*TT_TINY, "--epochs", "1", "--out", str(tmp_path / "file" / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot write to output directory" in r.stderr


# --- the offline demo, end to end, and the curves command ---------------------------------------

def test_shortened_demo_learns_without_data(tmp_path):
    """train_teacher.py then zskt.py on shapes, shortened: the zero-shot student ends far above
    chance, and its agreement with the teacher rises during training."""
    def run(*cmd):
        r = subprocess.run([sys.executable, *cmd], cwd=HERE, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r
    run("train_teacher.py", "--out", str(tmp_path / "teacher"))  # the demo teacher, ~30 s
    run("zskt.py", "--teacher-checkpoint", str(tmp_path / "teacher" / "model.pt"), "--iterations", "150",
        "--log-every", "30", "--mte-images", "10", "--mte-steps", "5", "--out", str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    with open(tmp_path / "run" / "metrics.csv") as f:
        agreement = [float(row["agreement"]) for row in csv.DictReader(f)]
    # Measured on a 2-core CPU (2 min): teacher 99.35 %, student 65.85 %, agreement 35.45 % -> 65.60 % (chance: 10 %).
    assert summary["teacher_test_acc"] > 0.95
    assert summary["student_test_acc"] > 0.4, summary
    assert max(agreement[-2:]) > agreement[0] + 0.15, agreement


def test_curves_command_compares_students_against_a_teacher(tmp_path, teacher_file, capsys):
    torch.manual_seed(1)
    for name, noise in (("zs", 0.0), ("kd", 0.01)):  # near-copies of the teacher: they agree on most images
        student, _ = zskt.load_model(teacher_file)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(noise * torch.randn_like(p))
        torch.save(zskt.model_checkpoint(student, "wrn-10-1", "shapes", *zskt.MEAN_STD["shapes"]), tmp_path / f"{name}.pt")
    zskt.main(["curves", "--teacher", str(teacher_file), "--student", str(tmp_path / "zs.pt"), str(tmp_path / "kd.pt"),
               "--images", "4", "--steps", "3", "--out", str(tmp_path / "curves")])
    mte = json.loads((tmp_path / "curves" / "mte.json").read_text())["mte"]
    assert mte["zs"] == 0.0 and mte["kd"] > 0  # a network against itself: MTE 0
    for name in ("zs", "kd"):
        with np.load(tmp_path / "curves" / name / "curves.npz") as f:
            assert f["p_stepped"].shape == (4, 9, 3)
            assert mte[name] == pytest.approx(np.abs(f["p_stepped"] - f["p_observed"]).mean(), rel=1e-6)
    assert (tmp_path / "curves" / "transition.png").is_file() or not importlib.util.find_spec("matplotlib")


def test_plot_without_matplotlib_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    p = torch.rand(2, 3, 4)
    assert zskt.plot_transition_curves([("s", p, p)], tmp_path / "t.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().out and not (tmp_path / "t.png").exists()
