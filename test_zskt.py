"""Tests of the method, zskt.py, in its order: data, models, losses, Algorithm 1, evaluation.
Shapes, gradients reaching exactly the right parameters, hand computations, and equivalence with
the author's code written out (author_reference.py). The rest of the project: tests/."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import zskt
from author_reference import (author_generator_forward, author_transition_curves,
                              author_wrn_forward, author_zero_shot_iteration)
from tests.hand import hand_normalize, np_at, np_kl

FAST = settings(max_examples=10, deadline=None)


def tiny_setup(seed=0, teacher="wrn-10-1", student="wrn-10-1", **cfg):
    torch.manual_seed(seed)
    t = zskt.wrn(teacher).eval().requires_grad_(False)
    s, g = zskt.wrn(student), zskt.Generator(16)
    cfg = zskt.Config(**{"batch_size": 8, "z_dim": 16, "n_s": 2, **cfg})
    opt_s = torch.optim.Adam(s.parameters(), cfg.lr_student)
    opt_g = torch.optim.Adam(g.parameters(), cfg.lr_generator)
    return t, s, g, opt_s, opt_g, cfg


def params(m):
    return [p.detach().clone() for p in m.parameters()]


def same(a, b, atol=0.0):
    return all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a, b))


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


# --- data ---------------------------------------------------------------------------------------

def test_normalisation_constants_are_the_published_ones():
    """The author's CIFAR-10 and SVHN constants (the author's code), and CIFAR-100's of the
    literature's shared teachers: a published teacher is fed what it was trained on."""
    assert zskt.MEAN_STD["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert zskt.MEAN_STD["svhn"] == ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    assert zskt.MEAN_STD["cifar100"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


@FAST
@given(seed=st.integers(0, 10_000), dataset=st.sampled_from(["cifar10", "cifar100", "svhn"]))
def test_normalize_against_hand_computation(seed, dataset):
    images = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    mean, std = zskt.MEAN_STD[dataset]
    expected = hand_normalize(images.numpy(), mean, std)
    assert np.allclose(zskt.normalize(images, mean, std).numpy(), expected, atol=1e-5)
    back = zskt.denormalize(zskt.normalize(images, mean, std), mean, std)
    assert torch.allclose(back, images.float() / 255, atol=1e-6)


def test_normalize_by_hand_for_one_pixel():
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    x = zskt.normalize(white, *zskt.MEAN_STD["cifar10"])[0, :, 0, 0]
    assert x.tolist() == pytest.approx([(1 - 0.4914) / 0.2023, (1 - 0.4822) / 0.1994,
                                        (1 - 0.4465) / 0.2010], rel=1e-6)


def test_a_test_set_is_a_small_named_tuple():
    x, y, classes = zskt.load_dataset("shapes", "test")
    test = zskt.TestSet(x, y, classes, *zskt.MEAN_STD["shapes"])
    assert test.mean == zskt.MEAN_STD["shapes"][0] and test.classes == classes
    assert x.shape == (2000, 3, 16, 16) and x.dtype == torch.uint8 and len(classes) == 10


# --- models -------------------------------------------------------------------------------------

@FAST
@given(n=st.integers(1, 2), k=st.integers(1, 2), batch=st.integers(2, 3),
       classes=st.integers(2, 12), size=st.sampled_from([16, 32]))
def test_wrn_output_and_activation_shapes(n, k, batch, classes, size):
    logits, (a1, a2, a3) = zskt.WideResNet(6 * n + 4, k, classes)(torch.randn(batch, 3, size, size))
    assert logits.shape == (batch, classes)
    assert a1.shape == (batch, 16 * k, size, size)
    assert a2.shape == (batch, 32 * k, size // 2, size // 2)
    assert a3.shape == (batch, 64 * k, size // 4, size // 4)


@pytest.mark.parametrize("name,count", [("wrn-16-1", 175_066), ("wrn-16-2", 691_674),
                                        ("wrn-40-1", 563_930), ("wrn-40-2", 2_243_546)])
def test_parameter_counts(name, count):
    assert sum(p.numel() for p in zskt.wrn(name).parameters()) == count


@pytest.mark.parametrize("name", ["resnet-18", "wrn-16", "wrn-15-1", "wrn-3-1"])
def test_bad_architecture_names_are_value_errors(name):
    with pytest.raises(ValueError, match="wrn-|6n\\+4"):
        zskt.wrn(name)


@pytest.mark.parametrize("size,count", [(32, 1_051_145), (16, 1_051_145 - 101 * 128 * (64 - 16))])
def test_generator_parameter_count_and_output(size, count):
    g = zskt.Generator(100, size)  # 16: only the linear layer shrinks, to 128x4x4 outputs
    assert sum(p.numel() for p in g.parameters()) == count
    x = g(torch.randn(16, 100))
    assert x.shape == (16, 3, size, size)
    # The final BN's initial affine map is the identity: each channel is ~zero-mean, unit-variance.
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
                         for s in ("weight", "bias", "running_mean", "running_var",
                                   "num_batches_tracked")}
            if i == 0:
                expected.add(p + "convShortcut.weight")
                assert sd[p + "convShortcut.weight"].shape == (c_out, c_in, 1, 1)
    assert set(sd) == expected
    assert "block1.layer.0.convShortcut.weight" not in zskt.wrn("wrn-16-1").state_dict()


@pytest.mark.parametrize("name,training", [("wrn-16-2", False), ("wrn-16-2", True),
                                           ("wrn-10-1", True)])
def test_wrn_equals_the_author_network_written_out(name, training):
    torch.manual_seed(0)
    net = zskt.wrn(name).train(training)
    with torch.no_grad():
        for m in net.modules():  # non-trivial BN statistics and affine parameters
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, .3)
                m.running_var.uniform_(.5, 2)
                m.weight.normal_(1, .2)
                m.bias.normal_(0, .2)
        x = torch.randn(4, 3, 32, 32)
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        logits, acts = net(x)
        ref_logits, ref_acts = author_wrn_forward(sd, x, training)
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    for a, r in zip(acts, ref_acts):
        assert a.shape == r.shape and torch.allclose(a, r, atol=1e-4)


@pytest.mark.parametrize("size", [32, 16])
def test_generator_equals_the_author_generator_written_out(size):
    torch.manual_seed(0)
    g = zskt.Generator(100, size)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1, .3)
                m.bias.normal_(0, .3)
        z = torch.randn(8, 100)
        assert torch.allclose(g(z), author_generator_forward(g.state_dict(), z, size), atol=1e-4)


def test_wrn_initialisation_is_the_author_fan_out():
    """conv weights ~ N(0, 2 / (k*k*C_out)) (fan-out, as the author's wresnet.py), BN weight 1,
    bias 0, fc bias 0."""
    torch.manual_seed(0)
    net = zskt.wrn("wrn-16-4")
    w = net.block2.layer[0].conv1.weight  # 64 -> 128 channels: fan-in and fan-out differ by 2x
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.02)
    shortcut = net.block2.layer[0].convShortcut.weight
    assert shortcut.std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)
    assert (net.fc.bias == 0).all()


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
    # Overlapping maps with several channels and signs: A^2 (not |A|) averaged over channels,
    # then the squared (not absolute) difference of the L2-normalised maps, averaged.
    s = torch.tensor([[[[1., -2.], [0., 1.]], [[3., 0.], [1., -1.]]]])    # 1 x 2 channels x 2 x 2
    t = torch.tensor([[[[2., 1.], [-1., 0.]], [[0., 2.], [1., 1.]]]])
    fs = np.array([(1 + 9) / 2, (4 + 0) / 2, (0 + 1) / 2, (1 + 1) / 2])
    ft = np.array([2., 2.5, 1., .5])
    ms, mt = fs / np.sqrt((fs ** 2).sum()), ft / np.sqrt((ft ** 2).sum())
    assert zskt.attention_map(s)[0].tolist() == pytest.approx(ms.tolist(), rel=1e-6)
    expected = ((ms - mt) ** 2).mean()
    assert zskt.attention_loss([s], [t]).item() == pytest.approx(expected, rel=1e-6)
    assert zskt.attention_loss([s, t], [t, t]).item() == pytest.approx(expected, rel=1e-6)  # adds


@pytest.mark.filterwarnings("ignore:reduction")
def test_kl_divergence_against_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    ps = np.exp(s.numpy()) / np.exp(s.numpy()).sum(1, keepdims=True)
    pt = np.exp(t.numpy()) / np.exp(t.numpy()).sum(1, keepdims=True)
    per_example = (pt * np.log(pt / ps)).sum(1)
    assert zskt.kl_divergence(s, t).item() == pytest.approx(per_example.mean() / 3, rel=1e-5)
    # ...which is F.kl_div's default 'mean' reduction, as in the author's code.
    author = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="mean").item()
    assert zskt.kl_divergence(s, t).item() == pytest.approx(author, rel=1e-5)
    assert zskt.generator_loss(s, t).item() == -zskt.kl_divergence(s, t).item()


@FAST
@given(seed=st.integers(0, 10_000), shift=st.floats(-50, 50), temperature=st.floats(0.5, 8))
def test_kl_nonnegative_and_zero_for_shifted_logits(seed, shift, temperature):
    g = torch.Generator().manual_seed(seed)
    s, t = 3 * torch.randn(5, 10, generator=g), 3 * torch.randn(5, 10, generator=g)
    assert zskt.kl_divergence(s, t, temperature) >= 0
    assert abs(zskt.kl_divergence(t + shift, t, temperature).item()) < 1e-5


@pytest.mark.parametrize("beta,T", [(250.0, 1.0), (7.0, 1.0), (0.0, 1.0), (30.0, 3.0)])
def test_both_losses_against_hand_computation(beta, T):
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(3, 5, generator=g), 3 * torch.randn(3, 5, generator=g)
    sa = [torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 4, 2, 2, generator=g)]
    ta = [torch.randn(3, 6, 4, 4, generator=g), torch.randn(3, 3, 2, 2, generator=g)]
    S, Tt = s.double().numpy(), t.double().numpy()
    SA, TA = [a.double().numpy() for a in sa], [a.double().numpy() for a in ta]
    assert zskt.student_loss(s, t, sa, ta, beta=beta, temperature=T).item() == pytest.approx(
        np_kl(S, Tt, T) + beta * np_at(SA, TA), rel=1e-5)
    assert zskt.generator_loss(s, t, T).item() == pytest.approx(-np_kl(S, Tt, T), rel=1e-5)
    if (beta, T) == (250.0, 1.0):  # the paper's values are the defaults
        assert zskt.student_loss(s, t, sa, ta).item() == pytest.approx(
            np_kl(S, Tt, 1) + 250 * np_at(SA, TA), rel=1e-5)


# --- Algorithm 1 --------------------------------------------------------------------------------

def test_generator_step_updates_only_the_generator():
    t, s, g, opt_s, opt_g, cfg = tiny_setup(n_s=0)
    t0, s0, g0 = copy.deepcopy(t.state_dict()), params(s), params(g)
    zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters() if p.dim() > 1)
    assert all(not same([a], [b]) for a, b in zip(g0, params(g)))  # every generator tensor moved
    assert same(s0, params(s)) and all(p.grad is None for p in s.parameters())
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in t0.items())
    assert all(p.grad is None for p in t.parameters())


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
    assert same(runs[0][1], runs[0][2])
    assert all(not same([a], [b]) for a, b in zip(runs[1][1], runs[1][2]))


def test_teacher_never_changes_and_gets_no_gradients():
    t, s, g, opt_s, opt_g, cfg = tiny_setup()
    before = copy.deepcopy(t.state_dict())
    for _ in range(2):
        zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert not t.training and all(p.grad is None for p in t.parameters())
    assert all(torch.equal(v, t.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("which", ["generator", "student"])
def test_gradient_norms_are_clipped(which):
    """With a clip far below the gradient norm, one plain SGD step moves the parameters by
    exactly lr * clip."""
    t, s, g, _, _, cfg = tiny_setup(n_s=1, grad_clip=1e-3)
    opt_s, opt_g = torch.optim.SGD(s.parameters(), 0.1), torch.optim.SGD(g.parameters(), 0.1)
    net = g if which == "generator" else s
    before = params(net)
    zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    step = math.sqrt(sum(((a - b) ** 2).sum().item() for a, b in zip(params(net), before)))
    assert step == pytest.approx(0.1 * 1e-3, rel=1e-2)  # clip_grad_norm_ divides by norm + 1e-6


@pytest.mark.parametrize("channels_last", [False, True])
def test_iteration_matches_the_author_loop_structure(channels_last, float64):
    """Our loop (no T/S weight grads in the G step, detached pseudo batch, teacher outputs once)
    gives the same student and generator as the author's structure from the same seed. In
    float64 and with SGD, so that float noise (other conv kernels) cannot hide a real difference:
    Adam would turn noise in near-zero gradients (conv biases before BN) into lr-sized steps."""
    results = []
    for fn in (zskt.zero_shot_iteration, author_zero_shot_iteration):
        t, s, g, _, _, cfg = tiny_setup(n_s=3)
        if fn is author_zero_shot_iteration:
            t.requires_grad_(True)  # the author keeps teacher gradients on
        elif channels_last:
            for m in (t, s, g):
                m.to(memory_format=torch.channels_last)
        opt_s, opt_g = torch.optim.SGD(s.parameters(), 0.05), torch.optim.SGD(g.parameters(), 0.05)
        torch.manual_seed(7)
        losses = [fn(t, s, g, opt_s, opt_g, cfg) for _ in range(2)]
        losses = [[float(d[k]) for k in ("loss_generator", "loss_student")] for d in losses]
        results.append((params(s), params(g), [b.clone() for b in s.buffers()], losses))
    (s1, g1, b1, l1), (s2, g2, b2, l2) = results
    # Real differences (a missing step, another pseudo batch) are ~1e-3; channels_last kernels
    # leave ~1e-8 in float64 after BatchNorm's cancellations.
    assert same(s1, s2, atol=1e-6) and same(g1, g2, atol=1e-6) and same(b1, b2, atol=1e-6)
    assert np.allclose(l1, l2, rtol=1e-6, atol=0)
    assert not same(s1, params(tiny_setup()[1]), atol=1e-3)  # training happened


def test_algorithm_1_runs_its_iterations_with_both_cosine_schedules():
    """Iterations first..N, each after one step of both schedules: lr_k = lr_0 (1 + cos(pi k/N))/2,
    0 at the end (the author's solver.py); the same as zero_shot_iteration called by hand."""
    t, s, g, _, _, cfg = tiny_setup(iterations=4, n_s=1)
    opts = zskt.optimizers(s, g, cfg)
    assert isinstance(opts.student, torch.optim.Adam)
    assert opts.student.defaults["betas"] == (0.9, 0.999)
    torch.manual_seed(3)
    seen = []
    for it, out in zskt.algorithm_1(t, s, g, opts, cfg):
        cosine = (1 + math.cos(math.pi * it / cfg.iterations)) / 2
        seen.append(it)
        lr_s, lr_g = (o.param_groups[0]["lr"] for o in (opts.student, opts.generator))
        assert lr_s == pytest.approx(cfg.lr_student * cosine, abs=1e-15)
        assert lr_g == pytest.approx(cfg.lr_generator * cosine, abs=1e-15)
        assert set(out) == {"loss_generator", "loss_student", "teacher_probs", "student_probs"}
    assert seen == [1, 2, 3, 4]
    assert opts.student.param_groups[0]["lr"] == pytest.approx(0, abs=1e-15)
    # By hand: the same seed, zero_shot_iteration four times, the same student.
    t2, s2, g2, _, _, _ = tiny_setup(iterations=4, n_s=1)
    opts2 = zskt.optimizers(s2, g2, cfg)
    torch.manual_seed(3)
    for _ in range(4):
        zskt.zero_shot_iteration(t2, s2, g2, opts2.student, opts2.generator, cfg)
        opts2.student_schedule.step()
        opts2.generator_schedule.step()
    assert same(params(s), params(s2)) and same(params(g), params(g2))
    # A later start runs the rest only.
    rest = zskt.algorithm_1(t, s, g, zskt.optimizers(s, g, cfg), cfg, first=3)
    assert [it for it, _ in rest] == [3, 4]


def hand_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8):
    """Adam (Kingma & Ba 2015, Algorithm 1) written out: the bias-corrected moments, no weight
    decay, no AMSGrad."""
    m = v = 0.0
    for t, g in enumerate(grads, 1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p = p - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


def test_both_adams_have_the_author_hyperparameters():
    """The author's solver.py builds both optimisers as optim.Adam(params, lr): betas (0.9, 0.999),
    eps 1e-8, no weight decay, each with its own learning rate. Two steps of each, in float64,
    against Adam written out: other betas (the GAN habit of 0.5), eps or a weight decay would move
    the weights elsewhere. Gradients span 1e-9..1, so that eps matters for some weights."""
    cfg = zskt.Config(lr_student=3e-3, lr_generator=7e-4)  # unequal: a swap shows
    torch.manual_seed(0)
    student, generator = zskt.wrn("wrn-10-1").double(), zskt.Generator(16, 16).double()
    opts = zskt.optimizers(student, generator, cfg)
    for opt, net, lr in ((opts.student, student, cfg.lr_student),
                         (opts.generator, generator, cfg.lr_generator)):
        assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
        group = opt.param_groups[0]
        assert (group["lr"], group["betas"], group["eps"], group["weight_decay"],
                group["amsgrad"], group["maximize"]) == (lr, (0.9, 0.999), 1e-8, 0, False, False)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
        g = torch.Generator().manual_seed(1)
        before = [p.detach().numpy().copy() for p in net.parameters()]
        grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64)
                  * 10.0 ** -torch.randint(0, 10, p.shape, generator=g) for p in net.parameters()]
                 for _ in range(2)]
        for step in grads:
            for p, grad in zip(net.parameters(), step):
                p.grad = grad.clone()
            opt.step()
        for p, p0, g1, g2 in zip(net.parameters(), before, *grads):
            expected = hand_adam(p0, [g1.numpy(), g2.numpy()], lr)
            assert np.allclose(p.detach().numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [3.0, 0.5])
def test_both_steps_of_an_iteration_use_the_temperature(T):
    """At T != 1 the generator's loss (n_g = 1) and the student's (n_s = 1) that an iteration
    returns equal the hand computations at that T on the same pseudo batch: the two players of
    Eq. 1 see one KL."""
    t, s, g, opt_s, opt_g, cfg = tiny_setup(n_g=1, n_s=0, temperature=T)
    g0, s0 = copy.deepcopy(g), copy.deepcopy(s)  # the networks before the generator's step
    torch.manual_seed(5)
    z = torch.randn(cfg.batch_size, cfg.z_dim)
    with torch.no_grad():
        x = g0(z)
        S, Tt = s0(x)[0].double().numpy(), t(x)[0].double().numpy()
    torch.manual_seed(5)
    out = zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert out["loss_generator"].item() == pytest.approx(-np_kl(S, Tt, T), rel=1e-5)
    assert np_kl(S, Tt, T) != pytest.approx(np_kl(S, Tt, 1), rel=1e-2)  # T changes the number

    t, s, g, opt_s, opt_g, cfg = tiny_setup(n_g=0, n_s=1, temperature=T, beta=30.0)
    g0, s0 = copy.deepcopy(g), copy.deepcopy(s)
    torch.manual_seed(5)
    z = torch.randn(cfg.batch_size, cfg.z_dim)
    with torch.no_grad():
        x = g0(z)
        (s_logits, s_acts), (t_logits, t_acts) = s0(x), t(x)
    S, Tt = s_logits.double().numpy(), t_logits.double().numpy()
    SA, TA = ([a.double().numpy() for a in acts] for acts in (s_acts, t_acts))
    torch.manual_seed(5)
    out = zskt.zero_shot_iteration(t, s, g, opt_s, opt_g, cfg)
    assert out["loss_student"].item() == pytest.approx(np_kl(S, Tt, T) + 30.0 * np_at(SA, TA),
                                                       rel=1e-5)


def test_algorithm_1_runs_in_the_batchnorm_modes_of_the_author(monkeypatch):
    """Handed over in the wrong modes, the teacher runs in eval mode (its running statistics) and
    the student and the generator in train mode (the pseudo batches' statistics)."""
    t, s, g, _, _, cfg = tiny_setup(iterations=2, n_s=1)
    t.train(), s.eval(), g.eval()
    modes, original = [], zskt.zero_shot_iteration
    monkeypatch.setattr(zskt, "zero_shot_iteration", lambda t_, s_, g_, *a: modes.append(
        (t_.training, s_.training, g_.training)) or original(t_, s_, g_, *a))
    list(zskt.algorithm_1(t, s, g, zskt.optimizers(s, g, cfg), cfg))
    assert modes == [(False, True, True)] * 2


def test_config_fields_carry_their_help_and_presets_only_known_fields():
    fields = {f.name: f for f in zskt.Config.__dataclass_fields__.values()}
    assert all(f.metadata.get("help") for f in fields.values())
    paper = zskt.Config()
    assert (paper.beta, paper.n_s, paper.lr_student, paper.lr_generator) == (250.0, 10, 2e-3, 1e-3)
    for preset in zskt.PRESETS.values():
        assert set(preset) <= set(fields)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        zskt.make_config("mnist")


# --- transition curves and MTE ------------------------------------------------------------------

def small_pair(seed=0, classes=4):
    torch.manual_seed(seed)
    return zskt.WideResNet(10, 1, classes).eval(), zskt.WideResNet(10, 1, classes).eval()


@pytest.mark.parametrize("use_labels", [False, True])
def test_batched_transition_curves_equal_one_image_at_a_time(use_labels, monkeypatch):
    monkeypatch.setattr(zskt, "CHUNK", 5)  # batches cut across images
    a, b = small_pair()
    x, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    kw = dict(steps=4, step_size=0.5, labels=labels if use_labels else None)
    batched = zskt.transition_curves(a, b, x, **kw)
    loop = author_transition_curves(a, b, x, **kw)
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
    targets = (pa.argmax(1)[:, None] + torch.arange(1, 5)) % 5
    assert torch.allclose(p_a[..., 0], pa.gather(1, targets), atol=1e-6)
    assert torch.allclose(p_b[..., 0], pb.gather(1, targets), atol=1e-6)


def test_transition_curves_step_on_the_images_only():
    a, b = small_pair()
    before = [copy.deepcopy(m.state_dict()) for m in (a, b)]
    a.train()  # handed over in train mode: curves run in eval mode and give it back as it was
    zskt.transition_curves(a, b, torch.randn(2, 3, 32, 32), steps=3)
    assert a.training and not b.training
    for m, sd in zip((a, b), before):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in sd.items())
        assert all(p.grad is None for p in m.parameters())


def test_mte_of_a_network_against_itself_is_zero():
    a, _ = small_pair()
    p_s, p_o = zskt.transition_curves(a, a, torch.randn(2, 3, 32, 32), steps=3)
    assert zskt.mean_transition_error(p_s, p_o) == 0.0


@FAST
@given(seed=st.integers(0, 10_000))
def test_mte_is_the_mean_absolute_difference(seed):
    rng = np.random.default_rng(seed)
    p, q = rng.random((3, 4, 5)), rng.random((3, 4, 5))
    assert zskt.mean_transition_error(p, q) == pytest.approx(np.abs(p - q).mean(), rel=1e-6)
    assert zskt.mean_transition_error(p, q) == pytest.approx(zskt.mean_transition_error(q, p),
                                                             rel=1e-9)


def test_mte_hand_computation():
    p = np.array([[[0.1, 0.5, 0.9], [0.2, 0.2, 0.2]]])
    q = np.array([[[0.1, 0.3, 0.4], [0.0, 0.2, 0.6]]])
    assert zskt.mean_transition_error(p, q) == pytest.approx((0 + .2 + .5 + .2 + 0 + .4) / 6)


def test_agreeing_images_only_returns_images_both_networks_agree_on():
    a, b = small_pair(classes=3)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    test = zskt.TestSet(images, torch.randint(0, 3, (40,)), ("a", "b", "c"),
                        *zskt.MEAN_STD["cifar10"])
    x, y, shared = zskt.agreeing_images(a, b, test, n=10, seed=1)
    with torch.no_grad():
        assert torch.equal(a(x)[0].argmax(1), shared) and torch.equal(b(x)[0].argmax(1), shared)
    mean, std = test.mean, test.std
    agree_total = (zskt.predict(a, images, mean, std) == zskt.predict(b, images, mean, std)).sum()
    assert len(x) == min(10, int(agree_total)) and len(y) == len(x)


class CountingLinear(torch.nn.Module):
    """A classifier of raw pixels that counts the images it sees; it returns (logits, maps)."""
    def __init__(self, seed, classes=4):
        super().__init__()
        self.fc, self.seen = torch.nn.Linear(3 * 4 * 4, classes), 0
        torch.nn.init.normal_(self.fc.weight, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        self.seen += len(x)
        return self.fc(x.flatten(1)), ()


@FAST
@given(n=st.integers(1, 70), batch_size=st.integers(1, 80), seed=st.integers(0, 3))
def test_agreeing_images_read_only_the_batches_they_need_and_equal_a_full_scan(n, batch_size, seed):
    images = torch.randint(0, 256, (60, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    test = zskt.TestSet(images, torch.arange(60) % 4, "abcd", (0.5,) * 3, (0.25,) * 3)
    a, b = CountingLinear(0), CountingLinear(1)
    x, y, shared = zskt.agreeing_images(a, b, test, n, seed=seed, batch_size=batch_size)
    # The definition, over the whole shuffled set at once:
    order = torch.randperm(60, generator=torch.Generator().manual_seed(seed))
    pa = zskt.predict(a, images[order], test.mean, test.std)
    pb = zskt.predict(b, images[order], test.mean, test.std)
    agree = torch.nonzero(pa == pb)[:, 0]
    keep = order[agree[:n]]
    assert torch.equal(x, zskt.normalize(images[keep], test.mean, test.std))
    assert torch.equal(y, test.labels[keep]) and torch.equal(shared, pa[agree[:n]])
    needed = 60 if len(agree) < n else int(agree[n - 1]) + 1  # images up to the n-th agreeing one
    assert a.seen - 60 == min(60, -(-needed // batch_size) * batch_size)  # whole batches, no more


def test_accuracy_is_the_fraction_of_correct_predictions():
    a, _ = small_pair(classes=3)
    images = torch.randint(0, 256, (30, 3, 32, 32), dtype=torch.uint8)
    pred = zskt.predict(a, images, *zskt.MEAN_STD["cifar10"])
    labels = pred.clone()
    labels[:9] = (labels[:9] + 1) % 3  # 9 of 30 wrong
    assert zskt.accuracy(a, zskt.TestSet(images, labels, "abc", *zskt.MEAN_STD["cifar10"])) == \
        pytest.approx(21 / 30)
