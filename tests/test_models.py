"""Tests of the literature's teachers (zskt_models.py): the published state-dict layouts, files in
them loading as they are, attention maps paired between architectures or taken by hooks from any
classifier, and tiny distillations from the command line and from Python."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import given, settings, strategies as st

import train_teacher as tt
import zskt
import zskt_models
import zskt_run
from helpers import TINY, interrupt_at, run_main, stopped_command, tiny_config
from zskt_utils import UserError

LAYOUTS = json.loads((Path(__file__).parent / "data" / "published_layouts.json").read_text())


@pytest.mark.parametrize("name,entries", [("resnet18", 122), ("resnet34", 218), ("vgg11", 58)])
def test_the_published_layouts_are_kept_exactly(name, entries):
    """Keys, their order and shapes, against the layouts of DAFL's resnet.py (as zju-vipa/CMI
    uses it) and RepDistiller's vgg.py, held as data."""
    layout = {k: list(v.shape) for k, v in zskt_models.build(name).state_dict().items()}
    assert len(LAYOUTS[name]) == entries
    assert list(layout.items()) == list(LAYOUTS[name].items())


def batch_norm(sd, key, h, training):
    return F.batch_norm(h, sd[key + ".running_mean"].clone(), sd[key + ".running_var"].clone(),
                        sd[key + ".weight"], sd[key + ".bias"], training, 0.1, 1e-5)


def dafl_resnet_forward(sd, x, training):
    """DAFL's resnet.py, as zju-vipa/CMI's datafree/models/classifiers/resnet.py runs it, written
    out as functions of a state dict: stem conv-BN-ReLU; in each BasicBlock conv-BN-ReLU-conv-BN,
    plus the shortcut (1x1 conv + BN where present), and only then the ReLU; stage strides
    1/2/2/2; global average pool; `linear`. Returns (logits, the four stage outputs)."""
    h = F.relu(batch_norm(sd, "bn1", F.conv2d(x, sd["conv1.weight"], padding=1), training))
    maps = []
    for stage in range(1, 5):
        blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith(f"layer{stage}.")})
        for b in blocks:
            p, stride = f"layer{stage}.{b}.", 2 if stage > 1 and b == 0 else 1
            out = F.conv2d(h, sd[p + "conv1.weight"], stride=stride, padding=1)
            out = F.relu(batch_norm(sd, p + "bn1", out, training))
            out = batch_norm(sd, p + "bn2", F.conv2d(out, sd[p + "conv2.weight"], padding=1),
                             training)
            if p + "shortcut.0.weight" in sd:
                h = batch_norm(sd, p + "shortcut.1",
                               F.conv2d(h, sd[p + "shortcut.0.weight"], stride=stride), training)
            h = F.relu(out + h)
        maps.append(h)
    pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return F.linear(pooled, sd["linear.weight"], sd["linear.bias"]), maps


def repdistiller_vgg_forward(sd, x, training):
    """RepDistiller's models/vgg.py (vgg11_bn) written out as functions of a state dict: in each
    block conv3x3 (with bias) + BN, a ReLU between them and none after the last; then ReLU and a
    2x2 max-pool after blocks 0-2 (and 3 at 64x64); global average pool; `classifier`. Returns
    (logits, the five block outputs before their ReLU)."""
    h, maps = x, []
    for i in range(5):
        convs = sorted({int(k.split(".")[1]) for k, v in sd.items()
                        if k.startswith(f"block{i}.") and v.dim() == 4})
        for j, c in enumerate(convs):  # Sequential indices: conv c, its BN c + 1
            h = F.relu(h) if j else h
            h = F.conv2d(h, sd[f"block{i}.{c}.weight"], sd[f"block{i}.{c}.bias"], padding=1)
            h = batch_norm(sd, f"block{i}.{c + 1}", h, training)
        maps.append(h)
        h = F.relu(h)
        if i < 3 or (i == 3 and x.shape[2] == 64):
            h = F.max_pool2d(h, 2, 2)
    pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
    return F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"]), maps


@pytest.mark.parametrize("name,training,size", [
    ("resnet18", False, 32), ("resnet34", False, 32), ("resnet18", True, 32),
    ("vgg11", False, 32), ("vgg11", True, 32), ("vgg11", False, 64)])
def test_the_literature_networks_compute_what_their_published_code_computes(name, training, size):
    """A published teacher loads into these networks by its keys: the forward must then be the
    published one, or the teacher computes other logits. Against the published forwards written
    out, in float64, with non-trivial BatchNorm statistics and affine parameters, in eval mode
    (a teacher) and in train mode (a student)."""
    torch.manual_seed(0)
    net = zskt_models.build(name, 7).double().train(training)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, .3)
                m.running_var.uniform_(.5, 2)
                m.weight.normal_(1, .2)
                m.bias.normal_(0, .2)
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        x = torch.randn(3, 3, size, size, dtype=torch.float64)
        logits, maps = net(x)
        forward = repdistiller_vgg_forward if name == "vgg11" else dafl_resnet_forward
        ref_logits, ref_maps = forward(sd, x, training)
    assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-9) and logits.shape == (3, 7)
    assert len(maps) == len(ref_maps)
    for a, r in zip(maps, ref_maps):
        assert a.shape == r.shape and torch.allclose(a, r, rtol=0, atol=1e-9)


LITERATURE_NAMES = {"wrn-40-2": "wrn40_2", "wrn-16-1": "wrn16_1"}  # their spelling


def published_file(path, name, num_classes=10, seed=0):
    """A random network saved as zju-vipa/CMI's train_scratch.py saves its teachers."""
    torch.manual_seed(seed)
    net = zskt_models.build(name, num_classes)
    torch.save({"epoch": 200, "arch": LITERATURE_NAMES.get(name, name),
                "state_dict": net.state_dict(), "best_acc1": 78.05,
                "optimizer": torch.optim.SGD(net.parameters(), 0.1).state_dict()}, path)
    return net


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "vgg11", "wrn-40-2", "wrn-16-1"])
def test_files_in_the_published_layout_load_as_they_are(tmp_path, name):
    file = tmp_path / f"cifar100_{LITERATURE_NAMES.get(name, name)}.pth"
    net = published_file(file, name, num_classes=100)
    torch.load(file, weights_only=True)  # nothing but tensors and plain types
    loaded, meta = zskt_models.load_model(file)
    assert type(loaded) is type(net) and meta["dataset"] == "cifar100"
    assert zskt_models.infer_arch(loaded.state_dict()) == (name, 100)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        (a, maps_a), (b, maps_b) = net.eval()(x), loaded.eval()(x)
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(maps_a, maps_b))


@pytest.mark.parametrize("name", ["wrn-10-1", "wrn-16-2", "wrn-40-1", "resnet18", "vgg11"])
def test_infer_arch_reads_name_and_classes(name):
    assert zskt_models.infer_arch(zskt_models.build(name, 7).state_dict()) == (name, 7)
    assert zskt_models.infer_arch({"conv.weight": torch.zeros(1)}) == (None, None)


@pytest.mark.parametrize("name,sizes", [("resnet18", [32, 16, 8, 4]), ("resnet34", [32, 16, 8, 4]),
                                        ("vgg11", [32, 16, 8, 4, 4]), ("wrn-16-1", [32, 16, 8])])
def test_every_network_returns_logits_and_its_stage_maps(name, sizes):
    net = zskt_models.build(name, 7)
    logits, maps = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and [m.shape[-1] for m in maps] == sizes
    assert zskt_models.map_sizes(net, 32) == [(s, s) for s in sizes]


def test_vgg_maps_are_the_block_outputs_before_their_relu():
    torch.manual_seed(0)
    net = zskt_models.build("vgg11").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = net(x)[1]
        first = net.block0(x)
    assert torch.equal(maps[0], first) and (maps[0] < 0).any()  # pre-ReLU: negative values too


def test_literature_names_of_wide_resnets_are_the_same_networks():
    assert zskt_models.canonical("wrn40_2") == "wrn-40-2" == zskt_models.canonical("wrn-40-2")
    assert zskt_models.canonical("resnet34") == "resnet34"
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'; use wrn-DEPTH-WIDTH"):
        zskt_models.build("resnet50")


def test_files_of_unknown_networks_are_refused_in_one_sentence(tmp_path):
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()},
               tmp_path / "imagenet_style.pt")
    with pytest.raises(UserError, match="holds no state dict of a network this project knows"):
        zskt_models.load_model(tmp_path / "imagenet_style.pt")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([32, 16, 8, 4, 2]), min_size=0, max_size=5),
       st.lists(st.sampled_from([32, 16, 8, 4, 2]), min_size=1, max_size=5))
def test_attention_pairs_join_maps_of_one_size(teacher, student):
    t_sizes, s_sizes = [(s, s) for s in teacher], [(s, s) for s in student]
    t_keep, s_keep = zskt_models.attention_pairs(t_sizes, s_sizes)
    assert len(t_keep) == len(s_keep)
    assert all(t_sizes[t] == s_sizes[s] for t, s in zip(t_keep, s_keep))
    if t_sizes == s_sizes:  # as the paper: every map with its counterpart, in order
        assert t_keep == s_keep == list(range(len(s_sizes)))
    else:  # each size both have, once, with the deepest map of that size
        assert {s_sizes[s] for s in s_keep} == set(t_sizes) & set(s_sizes)
        assert all(t == max(i for i, x in enumerate(t_sizes) if x == t_sizes[t]) for t in t_keep)


def test_pairing_says_which_maps_it_uses_or_refuses_without_a_common_size():
    teacher, student = zskt_models.build("vgg11"), zskt_models.build("resnet18")
    t, s, note = zskt_models.pair_for_attention(teacher, student, 32, 250.0)
    assert note == ("attention transfer pairs teacher map 1 with student map 1 (32x32), teacher "
                    "map 2 with student map 2 (16x16), teacher map 3 with student map 3 (8x8), "
                    "teacher map 5 with student map 4 (4x4)")
    x = torch.randn(2, 3, 32, 32)
    assert [m.shape[-1] for m in t(x)[1]] == [32, 16, 8, 4] == [m.shape[-1] for m in s(x)[1]]
    t, s, note = zskt_models.pair_for_attention(zskt.wrn("wrn-16-1"), zskt.wrn("wrn-10-2"), 32, 250)
    assert note is None and isinstance(t, zskt.WideResNet)  # WRN to WRN: as the paper
    logits_only = zskt_models.WithAttention(torchvision.models.resnet18(num_classes=10))
    with pytest.raises(ValueError, match="pass --beta 0"):
        zskt_models.pair_for_attention(logits_only, student, 32, 250.0)
    assert zskt_models.pair_for_attention(logits_only, student, 32, 0.0)[2] == \
        "attention transfer is off (beta = 0)"


def test_hooks_take_the_maps_of_named_modules_of_any_classifier():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    wrapped = zskt_models.WithAttention(net, ["layer1", "layer3"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, maps = wrapped(x)
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        l1 = net.layer1(h)
        l3 = net.layer3(net.layer2(l1))
    assert torch.equal(logits, net(x)) and torch.equal(maps[0], l1) and torch.equal(maps[1], l3)
    with pytest.raises(ValueError, match="no module called layer9"):
        zskt_models.WithAttention(net, ["layer9"])


def logits_only_classifier():
    """A torchvision-style CIFAR classifier that returns logits only."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the usual CIFAR stem
    net.maxpool = torch.nn.Identity()
    return net


def test_any_teacher_from_python_with_hooks_or_without_attention(tmp_path, shapes_test,
                                                                  monkeypatch):
    teacher = logits_only_classifier()
    cfg = tiny_config(iterations=2, student="resnet18", mte_images=2)
    trained = zskt_run.train_zero_shot(cfg, teacher, shapes_test, tmp_path / "hooks",
                                       attention_layers=["layer1", "layer2", "layer3", "layer4"])
    assert (trained.summary["teacher"], trained.summary["student"]) == ("ResNet", "resnet18")
    assert isinstance(trained.student, zskt_models.ResNet)
    with pytest.raises(UserError, match="pass --beta 0"):
        zskt_run.train_zero_shot(cfg, teacher, shapes_test, tmp_path / "none")
    assert not (tmp_path / "none").exists()
    zskt_run.train_zero_shot(tiny_config(iterations=2, beta=0.0, mte_images=2), teacher,
                             shapes_test, tmp_path / "beta0")
    saved = json.loads((tmp_path / "beta0" / "config.json").read_text())
    assert saved["teacher_checkpoint"] is None  # not a network this project can rebuild
    code_hint = "resume it from Python with resume=True"
    with pytest.raises(UserError, match=code_hint):
        zskt_run.main(["--out", str(tmp_path / "beta0"), "--resume"])
    # Stopped, such a run names the call that continues it, not a command that would be refused.
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 1)
    cfg = tiny_config(iterations=2, beta=0.0, mte_images=2)
    printed = stopped_command(lambda: zskt_run.train_zero_shot(cfg, teacher, shapes_test,
                                                               tmp_path / "stopped"))
    assert printed == f"train_zero_shot(..., out={str(tmp_path / 'stopped')!r}, resume=True) " \
                      f"with the same teacher"
    monkeypatch.undo()
    zskt_run.train_zero_shot(cfg, teacher, shapes_test, tmp_path / "stopped", resume=True)
    assert (tmp_path / "stopped" / "summary.json").is_file()


def test_a_resnet_teacher_distils_into_a_wide_resnet_from_the_command_line(tmp_path, capsys,
                                                                          small_shapes):
    published_file(tmp_path / "teacher_resnet34.pth", "resnet34")
    zskt_run.main(["--teacher-checkpoint", str(tmp_path / "teacher_resnet34.pth"), "--iterations",
                   "2", "--out", str(tmp_path / "r"), *TINY])
    out = capsys.readouterr().out
    assert "attention transfer pairs teacher map 1 with student map 1 (16x16), teacher map 2 " \
           "with student map 2 (8x8), teacher map 3 with student map 3 (4x4)" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert (summary["teacher"], summary["student"]) == ("resnet34", "wrn-10-1")
    student = zskt_models.load_model(tmp_path / "r" / "student.pt")[0]
    assert isinstance(student, zskt.WideResNet)
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])  # finished: reported, as any run


def test_a_vgg_teacher_distils_into_a_resnet_with_beta_0_and_curves_follow(tmp_path, capsys,
                                                                          small_shapes):
    published_file(tmp_path / "teacher_vgg11.pth", "vgg11")
    base = ["--teacher-checkpoint", str(tmp_path / "teacher_vgg11.pth"), *TINY, "--student",
            "resnet18", "--iterations", "2"]
    zskt_run.main([*base, "--beta", "0", "--out", str(tmp_path / "r")])
    assert "attention transfer is off (beta = 0)" in capsys.readouterr().out
    zskt_run.main(["curves", "--dataset", "shapes", "--teacher-checkpoint",
                   str(tmp_path / "teacher_vgg11.pth"), "--student-checkpoint",
                   str(tmp_path / "r" / "student.pt"), "--images", "2", "--steps", "2", "--out",
                   str(tmp_path / "c")])
    assert set(json.loads((tmp_path / "c" / "mte.json").read_text())["mte"]) == {"student"}


def test_train_teacher_trains_the_literature_architectures_and_distils_from_them(
        small_shapes, tmp_path, monkeypatch, capsys):
    tt.main(["--arch", "resnet18", "--batch-size", "32", "--max-steps", "2", "--epochs", "1",
             "--out", str(tmp_path / "r18")])
    model, meta = zskt_models.load_model(tmp_path / "r18" / "model.pt")
    assert isinstance(model, zskt_models.ResNet) and meta["arch"] == "resnet18"
    published_file(tmp_path / "vgg.pth", "vgg11")
    betas, loss = [], tt.kd_at_loss
    monkeypatch.setattr(tt, "kd_at_loss", lambda *a, **k: betas.append(k["beta"]) or loss(*a, **k))
    tt.main(["--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "2", "--epochs", "1",
             "--distill-from", str(tmp_path / "vgg.pth"), "--out", str(tmp_path / "kd")])
    out = capsys.readouterr().out
    assert "teacher map 3 with student map 3 (4x4); beta = 1000 x 3 / 3" in out  # at 16x16
    assert betas == [1000.0] * 2
    published_file(tmp_path / "r34.pth", "resnet34")  # four stages: beta x 3/4
    betas.clear()
    tt.main(["--arch", "resnet18", "--batch-size", "32", "--max-steps", "2", "--epochs", "1",
             "--distill-from", str(tmp_path / "r34.pth"), "--out", str(tmp_path / "kd34")])
    assert "attention transfer pairs every map; beta = 1000 x 3 / 4" in capsys.readouterr().out
    assert betas == [750.0] * 2
    meta = zskt_models.load_model(tmp_path / "kd" / "model.pt")[1]
    assert meta["teacher"] == str(tmp_path / "vgg.pth")


def test_cifar100_from_a_copy_on_disk_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """torchvision's CIFAR-100 files, made up (2 train and 1 test image per class): a teacher,
    a zero-shot student and their transition curves, as a user would run them."""
    import pickle
    import numpy as np
    root = tmp_path / "data" / "cifar-100-python"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(root / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": labels}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{c}" for c in range(100)]}, f)
    monkeypatch.setattr(torchvision.datasets.CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a: True)
    images, labels, classes = zskt.load_dataset("cifar100", "test", tmp_path / "data")
    assert images.shape == (100, 3, 32, 32) and labels.tolist() == list(range(100))
    assert classes[:2] == ("class0", "class1")
    data = ["--dataset", "cifar100", "--data-dir", str(tmp_path / "data")]
    tt.main([*data, "--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "1", "--epochs",
             "1", "--out", str(tmp_path / "t")])
    meta = zskt_models.load_model(tmp_path / "t" / "model.pt")[1]
    assert meta["mean"] == list(zskt.MEAN_STD["cifar100"][0]) and meta["dataset"] == "cifar100"
    zskt_run.main([*data, "--teacher-checkpoint", str(tmp_path / "t" / "model.pt"), *TINY,
                   "--iterations", "2", "--out", str(tmp_path / "z")])
    summary = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert summary["dataset"] == "cifar100" and len(summary["student_per_class_acc"]) == 100
    zskt_run.main(["curves", "--teacher-checkpoint", str(tmp_path / "t" / "model.pt"),
                   "--student-checkpoint", str(tmp_path / "z" / "student.pt"), "--images", "2",
                   "--steps", "2", "--data-dir", str(tmp_path / "data"), "--out",
                   str(tmp_path / "c")])
    with np.load(tmp_path / "c" / "student" / "curves.npz") as f:
        assert f["p_stepped"].shape[1] == 99  # C - 1 targets
    # KD+AT from a published file: the dataset comes from its name, as in zskt.py.
    published_file(tmp_path / "cifar100_wrn16_1.pth", "wrn-16-1", num_classes=100)
    tt.main(["--data-dir", str(tmp_path / "data"), "--arch", "wrn-10-1", "--batch-size", "32",
             "--max-steps", "1", "--epochs", "1", "--samples-per-class", "1", "--distill-from",
             str(tmp_path / "cifar100_wrn16_1.pth"), "--out", str(tmp_path / "kd")])
    assert zskt_models.load_model(tmp_path / "kd" / "model.pt")[1]["dataset"] == "cifar100"
    assert "(default for cifar100: 80000)" in " ".join(
        __import__("helpers").help_text("zskt.py", ["--dataset", "cifar100"], monkeypatch).split())


def test_a_teacher_for_the_wrong_number_of_classes_is_refused(tmp_path, capsys):
    published_file(tmp_path / "cifar100_resnet34.pth", "resnet34", num_classes=100)
    code, err = run_main(["--dataset", "shapes", "--teacher-checkpoint",
                          str(tmp_path / "cifar100_resnet34.pth"), "--out", str(tmp_path / "r")],
                         capsys)
    assert code == 2 and "holds a resnet34 with 100 classes, but a network with 10 classes" in err
