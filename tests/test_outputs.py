"""What users read, checked against independent computations: every column of metrics.csv, every
field of summary.json and aggregate.json, the console report, mte.json, and the figures."""
import copy
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zskt
import zskt_models
import zskt_plots
import zskt_run
import zskt_shapes
from author_reference import author_transition_curves
from hand import hand_normalize, np_at, np_kl
from helpers import (TINY, interrupt_at, metrics, stopped_command, text_outside, tiny_config,
                     tiny_run)
from zskt_utils import load_checkpoint


class Recorder:
    """Records, with forward hooks on the networks themselves, what the teacher and the student
    computed inside each outer iteration of a run, and the student's weights after it."""

    def __init__(self, monkeypatch):
        self.iterations, self.inside, hooked = [], False, []
        original = zskt.zero_shot_iteration

        def wrapped(teacher, student, generator, opt_s, opt_g, cfg):
            if not hooked:
                teacher.register_forward_hook(self.hook("teacher"))
                student.register_forward_hook(self.hook("student"))
                hooked.append(student)
            self.iterations.append({"teacher": [], "student": []})
            self.inside = True
            out = original(teacher, student, generator, opt_s, opt_g, cfg)
            self.inside = False
            self.iterations[-1]["weights"] = copy.deepcopy(student.state_dict())
            return out
        monkeypatch.setattr(zskt, "zero_shot_iteration", wrapped)

    def hook(self, who):
        def record(module, inputs, output):
            if self.inside:
                logits, maps = output
                self.iterations[-1][who].append(dict(
                    logits=logits.detach().double().numpy(),
                    maps=[m.detach().double().numpy() for m in maps],
                    grad=torch.is_grad_enabled(), input_grad=inputs[0].requires_grad))
        return record

    def per_iteration(self, beta):
        """The values one iteration contributes, computed by hand from the recorded outputs."""
        values = []
        for it in self.iterations:
            t_gen = [r for r in it["teacher"] if r["input_grad"]][-1]  # the generator step
            s_gen = [r for r in it["student"] if r["input_grad"]][-1]
            pseudo = [r for r in it["teacher"] if not r["grad"]][-1]  # the pseudo batch, once
            s_last = [r for r in it["student"] if r["grad"] and not r["input_grad"]][-1]

            def top(logits):
                p = np.exp(logits - logits.max(1, keepdims=True))
                return (p / p.sum(1, keepdims=True)).max(1).mean()
            values.append({
                "loss_generator": -np_kl(s_gen["logits"], t_gen["logits"]),
                "loss_student": np_kl(s_last["logits"], pseudo["logits"])
                + beta * np_at(s_last["maps"], pseudo["maps"]),
                "teacher_confidence": top(pseudo["logits"]),
                "student_confidence": top(s_last["logits"]),
                "classes": np.bincount(pseudo["logits"].argmax(1),
                                       minlength=pseudo["logits"].shape[1])})
        return values


def independent_predictions(arch, weights, test):
    """Predictions of a network with these weights on hand-normalised test images."""
    net = zskt.wrn(arch, len(test.classes))
    net.load_state_dict(weights)
    x = torch.from_numpy(hand_normalize(test.images.numpy(), test.mean, test.std)).float()
    with torch.no_grad():
        return net.eval()(x)[0].argmax(1)


def independent_mte(student, teacher, test, n, steps):
    """Algorithm 2 one image at a time (the author's loop) on the first n test images, after a
    shuffle with seed 0, on which both networks agree; targets skip the true label."""
    ps, pt = (independent_predictions("wrn-10-1", m.state_dict(), test) for m in (student, teacher))
    order = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))
    keep = [int(i) for i in order if ps[i] == pt[i]][:n]
    x = torch.from_numpy(hand_normalize(test.images[keep].numpy(), test.mean, test.std)).float()
    p_s, p_o = author_transition_curves(student, teacher, x, steps, 1.0, test.labels[keep])
    return float((p_s - p_o).abs().mean()), len(keep)


def run_and_record(tmp_path, test, monkeypatch, name="r", **overrides):
    recorder = Recorder(monkeypatch)
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1")
    cfg = tiny_config(iterations=5, log_every=2, checkpoint_every=2, **overrides)
    t0 = time.time()
    zskt_run.train_zero_shot(cfg, teacher, test, tmp_path / name)
    return recorder, teacher, cfg, time.time() - t0


def test_every_metrics_column_against_an_independent_computation(tmp_path, shapes_test,
                                                                 monkeypatch):
    """Iterations 1-5 logged every 2: the intervals are 1-2, 3-4 and 5 (a shorter last one), and
    each column is the mean over the iterations really in its interval."""
    recorder, teacher, cfg, wall = run_and_record(tmp_path, shapes_test, monkeypatch)
    values = recorder.per_iteration(cfg.beta)
    teacher_pred = independent_predictions("wrn-10-1", teacher.state_dict(), shapes_test)
    rows = metrics(tmp_path / "r" / "metrics.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 4, 5]
    for row, interval in zip(rows, ([1, 2], [3, 4], [5])):
        v = [values[i - 1] for i in interval]
        for key in ("loss_generator", "loss_student", "teacher_confidence", "student_confidence"):
            expected = np.mean([x[key] for x in v])
            assert float(row[key]) == pytest.approx(expected, rel=1e-4, abs=1e-7), key
        fractions = np.sum([x["classes"] for x in v], 0) / (cfg.batch_size * len(interval))
        for c in range(10):
            assert float(row[f"teacher_class_{c}"]) == pytest.approx(fractions[c], abs=1e-6)
        student_pred = independent_predictions(
            "wrn-10-1", recorder.iterations[interval[-1] - 1]["weights"], shapes_test)
        assert float(row["student_test_acc"]) == pytest.approx(
            (student_pred == shapes_test.labels).float().mean().item(), abs=1e-6)
        assert float(row["agreement"]) == pytest.approx(
            (student_pred == teacher_pred).float().mean().item(), abs=1e-6)
        cosine = (1 + math.cos(math.pi * interval[-1] / cfg.iterations)) / 2
        assert float(row["lr_student"]) == pytest.approx(cfg.lr_student * cosine, abs=1e-12)
        assert float(row["lr_generator"]) == pytest.approx(cfg.lr_generator * cosine, abs=1e-12)
    seconds = [float(r["seconds"]) for r in zskt_run.read_rows(tmp_path / "r" / "metrics.csv")]
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= wall
    assert set(rows[0]) == {"iteration", "loss_generator", "loss_student", "teacher_confidence",
                            "student_confidence", "student_test_acc", "agreement", "lr_student",
                            "lr_generator", *(f"teacher_class_{c}" for c in range(10))}


def test_every_summary_field_against_an_independent_computation(tmp_path, shapes_test,
                                                                monkeypatch, capsys):
    recorder, teacher, cfg, wall = run_and_record(tmp_path, shapes_test, monkeypatch)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    student = zskt_models.load_model(tmp_path / "r" / "student.pt")[0]
    last = recorder.iterations[-1]["weights"]
    assert all(torch.equal(last[k], v) for k, v in student.state_dict().items())
    labels = shapes_test.labels
    t_pred = independent_predictions("wrn-10-1", teacher.state_dict(), shapes_test)
    s_pred = independent_predictions("wrn-10-1", last, shapes_test)
    t_acc = (t_pred == labels).float().mean().item()
    s_acc = (s_pred == labels).float().mean().item()
    mte, n = independent_mte(student, teacher.eval(), shapes_test, cfg.mte_images, cfg.mte_steps)
    pseudo = [r for r in recorder.iterations[-1]["teacher"] if not r["grad"]][-1]
    expected = {
        "dataset": "shapes", "teacher": "wrn-10-1", "student": "wrn-10-1", "iterations": 5,
        "seed": 0, "device": "cpu", "teacher_test_acc": t_acc, "student_test_acc": s_acc,
        "student_teacher_ratio": s_acc / t_acc, "mte": mte, "mte_images": n, "mte_steps": 2,
        "mte_step_size": 1.0, "mte_targets": "label", "classes": list(zskt_shapes.CLASSES),
        "teacher_per_class_acc": [(t_pred[labels == c] == c).float().mean().item()
                                  for c in range(10)],
        "student_per_class_acc": [(s_pred[labels == c] == c).float().mean().item()
                                  for c in range(10)],
        "teacher_classes_last_pseudo_batch": np.bincount(pseudo["logits"].argmax(1),
                                                         minlength=10).tolist(),
        "config": dataclasses.asdict(cfg)}
    assert set(summary) == set(expected) | {"seconds", "device_name"}
    for key, value in expected.items():
        assert summary[key] == (pytest.approx(value, rel=1e-4, abs=1e-7)
                                if isinstance(value, (float, list)) and key != "classes"
                                else value), key
    assert 0 < summary["seconds"] <= wall and "thread" in summary["device_name"]
    assert n == 3  # the run asked for 3 images and found them
    # The console report of the command line says the same, with the MTE's N and K.
    capsys.readouterr()
    zskt_run.print_report([summary], tmp_path / "r")
    out = capsys.readouterr().out
    assert f"teacher test accuracy        {t_acc:.2%}" in out
    assert f"student test accuracy        {s_acc:.2%}" in out
    assert f"student / teacher ratio      {s_acc / t_acc:.3f}" in out
    assert f"mean transition error (MTE)  {mte:.3f} (N = 3 images, K = 2 steps, xi = 1)" in out


def test_the_mte_gives_the_n_of_the_images_it_stands_on_not_the_n_asked_for(tmp_path,
                                                                          shapes_test, capsys):
    """All 60 test images asked for, fewer agree: summary.json, curves.npz and the report give
    the N of the agreeing images, which the MTE averages over (Section 4.4)."""
    asked = 60
    test = shapes_test._replace(images=shapes_test.images[:asked],
                                labels=shapes_test.labels[:asked])
    tiny_run(dict(iterations=2, mte_images=asked), test, tmp_path / "r")
    teacher = zskt_models.load_model(tmp_path / "r" / "teacher.pt")[0]
    student = zskt_models.load_model(tmp_path / "r" / "student.pt")[0]
    mte, n = independent_mte(student, teacher.eval(), test, asked, 2)
    assert 0 < n < asked  # the case this test is about: fewer agree than were asked for
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["mte_images"] == n and summary["mte"] == pytest.approx(mte, rel=1e-4)
    assert len(np.load(tmp_path / "r" / "curves.npz")["p_stepped"]) == n
    capsys.readouterr()
    zskt_run.print_report([summary], tmp_path / "r")
    assert f"{mte:.3f} (N = {n} images, K = 2 steps, xi = 1)" in capsys.readouterr().out


@pytest.mark.parametrize("n_classes", [3, 100])
def test_the_last_pseudo_batch_is_counted_over_the_teachers_own_classes(n_classes, tmp_path,
                                                                        shapes_test,
                                                                        monkeypatch):
    """A teacher of a 3-class image folder and one as wide as CIFAR-100: summary.json counts the
    teacher's classes on the last pseudo batch over its own classes, and metrics.csv has one
    column per class; CIFAR-10's 10 would give a list too long for one, too short for the
    other."""
    recorder = Recorder(monkeypatch)
    test = shapes_test._replace(labels=shapes_test.labels % n_classes,
                                classes=tuple(f"class{c}" for c in range(n_classes)))
    torch.manual_seed(0)
    cfg = tiny_config(iterations=3, log_every=3, mte_images=0)
    zskt_run.train_zero_shot(cfg, zskt.wrn("wrn-10-1", n_classes), test, tmp_path / "r")
    pseudo = [r for r in recorder.iterations[-1]["teacher"] if not r["grad"]][-1]
    counts = np.bincount(pseudo["logits"].argmax(1), minlength=n_classes)
    assert len(counts) == n_classes and counts.sum() == cfg.batch_size
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["teacher_classes_last_pseudo_batch"] == counts.tolist()
    assert len(summary["student_per_class_acc"]) == n_classes
    (row,) = metrics(tmp_path / "r" / "metrics.csv")
    fractions = np.sum([v["classes"] for v in recorder.per_iteration(cfg.beta)], 0) / (
        cfg.batch_size * cfg.iterations)
    columns = sorted((k for k in row if k.startswith("teacher_class_")),
                     key=lambda k: int(k.rsplit("_", 1)[1]))
    assert columns == [f"teacher_class_{c}" for c in range(n_classes)]
    assert [float(row[k]) for k in columns] == pytest.approx(fractions.tolist(), abs=1e-6)


def test_resumed_runs_log_the_same_interval_means(tmp_path, shapes_test, monkeypatch):
    """Stopped inside the interval 3-4 and resumed: its row still averages iterations 3 and 4."""
    run_and_record(tmp_path, shapes_test, monkeypatch, name="a")
    monkeypatch.undo()
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 3)
    cfg = tiny_config(iterations=5, log_every=2, checkpoint_every=2)
    torch.manual_seed(0)
    stopped_command(lambda: zskt_run.train_zero_shot(cfg, zskt.wrn("wrn-10-1"), shapes_test,
                                                     tmp_path / "b"))
    monkeypatch.undo()
    torch.manual_seed(0)
    zskt_run.train_zero_shot(cfg, zskt.wrn("wrn-10-1"), shapes_test, tmp_path / "b", resume=True)
    rows = (metrics(tmp_path / d / "metrics.csv") for d in "ab")
    for ra, rb in zip(*rows):
        assert all(float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-5) for k in ra)


def test_aggregate_is_the_mean_and_population_std_of_the_seeds(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--seeds", "0",
                   "1", "2", "--out", str(tmp_path / "runs"), *TINY])
    summaries = [json.loads((tmp_path / "runs" / f"seed{s}" / "summary.json").read_text())
                 for s in range(3)]
    agg = json.loads((tmp_path / "runs" / "aggregate.json").read_text())
    assert agg["seeds"] == [0, 1, 2]
    for key in ("teacher_test_acc", "student_test_acc", "student_teacher_ratio", "mte"):
        v = np.array([s[key] for s in summaries], dtype=float)
        assert agg[key] == {"mean": pytest.approx(v.mean()), "std": pytest.approx(v.std()), "n": 3}
    out = capsys.readouterr().out
    accs = np.array([s["student_test_acc"] for s in summaries])
    assert f"{accs.mean():.2%} +- {accs.std():.2%} (mean +- population std over 3 seeds)" in out
    for s in summaries:
        assert f"seed {s['seed']}: student {s['student_test_acc']:.2%}, MTE {s['mte']:.3f} (N = " \
               f"{s['mte_images']} images, K = 2 steps, xi = 1)" in out


def test_a_seed_without_an_mte_is_left_out_of_the_mte_aggregate(tmp_path, teacher_file,
                                                               monkeypatch, capsys):
    """Seed 1's student agrees with the teacher on no test image, so it has no MTE: aggregate.json
    gives the mean and population std of seeds 0 and 2 with n = 2, and the report those numbers
    and "n/a" for seed 1, never nan."""
    seeds, run, agreeing = [], zskt_run.train_zero_shot, zskt.agreeing_images

    def seed_run(cfg, *args, **kwargs):
        seeds.append(cfg.seed)
        return run(cfg, *args, **kwargs)

    def none_for_seed_1(*args, **kwargs):
        x, y, shared = agreeing(*args, **kwargs)
        return (x[:0], y[:0], shared[:0]) if seeds[-1] == 1 else (x, y, shared)
    monkeypatch.setattr(zskt_run, "train_zero_shot", seed_run)
    monkeypatch.setattr(zskt, "agreeing_images", none_for_seed_1)
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--seeds", "0",
                   "1", "2", "--out", str(tmp_path / "runs"), *TINY])
    assert seeds == [0, 1, 2]
    summaries = [json.loads((tmp_path / "runs" / f"seed{s}" / "summary.json").read_text())
                 for s in range(3)]
    assert summaries[1]["mte"] is None and summaries[1]["mte_images"] == 0
    mtes = np.array([summaries[s]["mte"] for s in (0, 2)])
    agg = json.loads((tmp_path / "runs" / "aggregate.json").read_text())
    assert agg["mte"] == {"mean": pytest.approx(mtes.mean()), "std": pytest.approx(mtes.std()),
                          "n": 2}
    assert agg["student_test_acc"]["n"] == 3
    out = capsys.readouterr().out
    assert not re.search(r"\bnan\b", out, re.I), out
    assert f"mean transition error (MTE)  {mtes.mean():.3f} +- {mtes.std():.3f} (mean +- " \
           f"population std over 2 seeds)" in out
    assert f"seed 1: student {summaries[1]['student_test_acc']:.2%}, MTE n/a" in out


def test_without_transition_curves_the_run_says_why_and_writes_none(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--out",
                   str(tmp_path / "r"), *TINY, "--mte-images", "0"])
    out = capsys.readouterr().out
    assert "no transition curves: --mte-images is 0" in out and "agree" not in out
    assert "mean transition error (MTE)  n/a" in out
    written = out.split("written to")[1]
    assert "student.pt" in written
    assert "curves.npz" not in written and "transition.png" not in written
    summary = json.loads((tmp_path / "r" / "summary.json").read_text(), parse_constant=lambda c:
                         pytest.fail(f"summary.json holds {c}, which is not JSON"))
    assert summary["mte"] is None and summary["mte_images"] == 0


def test_curves_report_the_images_they_used(tmp_path, teacher_file, capsys, small_shapes):
    zskt_run.main(["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
                   str(teacher_file), "--images", "5000", "--steps", "2", "--out",
                   str(tmp_path / "c")])
    saved = json.loads((tmp_path / "c" / "mte.json").read_text())
    assert saved["images"] == {"teacher": 400}  # all 400 test images: it agrees with itself
    out = capsys.readouterr().out
    assert "up to 400 images x 9 targets x 2 steps" in out
    assert "N = 400 images, K = 2 steps" in out


def test_figures_keep_their_texts_inside(tmp_path):
    rows = [{"iteration": i, "student_test_acc": .5, "agreement": .5, "loss_student": .1,
             "loss_generator": -.1, "teacher_confidence": .7, "student_confidence": .3,
             "lr_student": 1e-3, "lr_generator": 1e-3} for i in (1, 2)]
    p = torch.rand(3, 9, 4)
    figures = [zskt_plots.plot_training(rows),
               zskt_plots.plot_transition_curves([("zero-shot", p, p), ("KD+AT", p, p / 2)]),
               zskt_plots.plot_samples(torch.rand(64, 3, 16, 16), torch.arange(64) % 10,
                                       torch.rand(64), zskt_shapes.CLASSES)]
    for fig in figures:
        assert text_outside(fig) == []


@pytest.fixture(scope="module")
def drawn_grids(tmp_path_factory, shapes_test):
    """A tiny run of 4 iterations, logged every 2, with what each sample grid it drew was given:
    (the calls of plot_samples, the run directory)."""
    calls, out, original = [], tmp_path_factory.mktemp("grids") / "r", zskt_plots.plot_samples

    def record(images, classes, confidences, names, path=None, **kwargs):
        calls.append(dict(images=images.clone(), classes=classes.clone(),
                          confidences=confidences.clone(), path=Path(path), **kwargs))
        return original(images, classes, confidences, names, path, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zskt_plots, "plot_samples", record)
        tiny_run(dict(iterations=4), shapes_test, out)
    return calls, out


def test_sample_grids_show_the_images_the_student_trains_on(drawn_grids):
    """The last grid against the final generator run by hand on the run's fixed z in train mode
    (batch statistics, as it makes the pseudo batches of Algorithm 1), and the teacher's class and
    probability on each image."""
    calls, out = drawn_grids
    assert [c["path"].name for c in calls] == ["samples_000002.png", "samples_000004.png"]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["iteration"] == 4  # the weights the last grid was drawn with
    cfg = tiny_config()
    generator = zskt.Generator(cfg.z_dim, 16)
    generator.load_state_dict(state["generator"])
    z = torch.randn(64, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.no_grad():
        x = generator.train()(z)
        assert (generator.eval()(z) - x).abs().max() > 0.5  # the two modes differ here
        p = zskt_models.load_model(out / "teacher.pt")[0].eval()(x)[0].double().softmax(1)
    mean, std = (np.array(v)[None, :, None, None] for v in zskt.MEAN_STD["shapes"])
    expected = np.clip(x.double().numpy() * std + mean, 0, 1)
    last = calls[-1]
    assert np.abs(last["images"].double().numpy() - expected).max() < 1e-5
    assert torch.equal(last["classes"], p.argmax(1))
    assert last["confidences"].double().numpy() == pytest.approx(p.amax(1).numpy(), abs=1e-5)


def test_sample_grids_of_a_run_name_the_iteration_and_whose_labels_they_show(drawn_grids):
    calls, _ = drawn_grids
    for call, iteration in zip(calls, (2, 4)):
        title = call.get("title") or ""
        assert f"iteration {iteration}" in title and "teacher" in title, title


def test_a_sample_grid_title_sits_above_the_images_inside_the_figure():
    images, classes = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    title = "iteration 750: the teacher's class and probability"
    fig = zskt_plots.plot_samples(images, classes, torch.rand(16), zskt_shapes.CLASSES,
                                  title=title)
    (text,) = [t for t in fig.texts if t.get_text() == title]
    assert text_outside(fig) == []
    renderer = fig.canvas.get_renderer()
    grid = fig.axes[0].get_window_extent(renderer)
    assert text.get_window_extent(renderer).y0 >= grid.y1 - 1  # above the images, not on them
    plain = zskt_plots.plot_samples(images, classes, torch.rand(16), zskt_shapes.CLASSES)
    assert plain.texts == [] and tuple(plain.get_size_inches()) == pytest.approx((8.8, 2.2))


@pytest.mark.parametrize("panels", [1, 2])
def test_the_transition_legend_covers_no_curve(panels):
    """A KD+AT student's curve climbs through the upper left within a few steps while its
    teacher's lies along the bottom (Figure 4): the legend sits outside every panel."""
    k = torch.arange(30.0)
    fast = (1 - torch.exp(-k / 1.5)).expand(4, 9, 30)
    fig = zskt_plots.plot_transition_curves([("KD+AT", fast, fast / 20)] * panels)
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert [t.get_text() for t in legends[0].get_texts()] == ["stepped", "observed (teacher)"]
    assert text_outside(fig) == []  # draws the figure
    renderer = fig.canvas.get_renderer()
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)


def test_sample_grids_name_what_the_teacher_sees():
    images = torch.rand(3, 3, 16, 16)
    fig = zskt_plots.plot_samples(images, torch.tensor([4, 0, 9]), torch.tensor([.93, .5, .25]),
                                  zskt_shapes.CLASSES)
    assert [t.get_text() for t in fig.axes[0].texts] == ["ring 0.93", "disk 0.50", "dots 0.25"]


def test_plot_without_matplotlib_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import now fails
    p = torch.rand(2, 3, 4)
    assert zskt_plots.plot_transition_curves([("s", p, p)], tmp_path / "t.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "t.png").exists()


def test_progress_lines_read_well_before_the_first_note(monkeypatch):
    import io
    import zskt_utils
    bar = zskt_utils.Progress(10, "Algorithm 1", extra=5.0, file=io.StringIO())
    assert bar.postfix().startswith("whole run ETA") and not bar.postfix().startswith((",", ";"))
    bar.note("student 50.00%")
    assert bar.postfix().startswith("student 50.00%; whole run ETA")
    assert zskt_utils.plural(1, "thread") == "1 thread"
    assert zskt_utils.plural(2, "epoch") == "2 epochs"
    threads = zskt_utils.plural(torch.get_num_threads(), "thread")
    assert zskt_utils.device_name("cpu").endswith(threads)
