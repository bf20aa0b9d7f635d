"""A zero-shot training run around zskt.py's Algorithm 1, and the command line of `python zskt.py`:
nothing here changes what the method computes, only what a run saves, shows, checks and resumes.

A run directory holds config.json (what --resume needs), metrics.csv, samples_*.png, training.png,
log.txt, checkpoint.pt (teacher.pt for a teacher from Python, tensorboard/ on request), and at the
end student.pt, curves.npz, transition.png and summary.json; a run of several seeds holds a run
directory seed<k>/ per seed and aggregate.json. docs/long-runs.md says what each holds.
"""
import argparse
import csv
import dataclasses
import json
import math
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

import zskt
import zskt_graph
import zskt_models
import zskt_plots
from zskt_utils import (Progress, Stopped, StopOnSignal, UserError, check_run_dir, check_seed,
                        device_name, format_time, full_fp32, is_seed, listed, load_checkpoint,
                        over_seeds, plural, prepare_run_dir, resolve_device, rng_state, run_cli,
                        run_lock, save_atomic, seed_everything, set_rng_state, shell_command, tee,
                        user_input, write_csv, write_json)

API_HINT = "pass resume=True to continue that run, overwrite=True to replace them, or another out"
CLI_HINT = "pass --resume to continue that run, --overwrite to replace them, or another --out"


class Trained(NamedTuple):
    """What train_zero_shot returns: the networks at the end of the run, and its summary.json."""
    student: torch.nn.Module
    generator: torch.nn.Module
    summary: dict


# ----------------------------------------------------------------------------------------------
# A run: Algorithm 1 with checkpoints, resume, logs and the final evaluation.

def train_zero_shot(cfg, teacher, test, out, device=None, resume=False, overwrite=False,
                    attention_layers=None, *, teacher_checkpoint=None, data_dir="./data",
                    resume_command=None, hint=API_HINT):
    """Trains a student of `cfg.student` from `teacher` without data; `test` (a zskt.TestSet) only
    measures. Writes the run directory `out`; an existing one is refused unless `resume` (continue
    from its checkpoint) or `overwrite`. The teacher may be any classifier: one that returns
    logits only gets its attention maps from the modules named in `attention_layers` (forward
    hooks), or none, which needs cfg.beta = 0; it is moved to the device and frozen. config.json
    names the teacher's file (a copy, teacher.pt, when the teacher came from Python), so
    `python zskt.py --out OUT --resume` continues the run. Returns Trained(student, generator,
    summary)."""
    device, out = resolve_device(device), Path(out)
    full_fp32()
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fastest kernels, at the price of bit-exact reruns
    with user_input():
        cfg = validate(cfg)
        teacher = as_teacher(teacher, attention_layers, test)
        outputs = count_classes(teacher, test)
        if outputs < 2:
            raise ValueError(two_classes(f"the teacher ({type(teacher).__name__})", outputs))
    cfg = graph_on(cfg, device, resume, out)
    network = zskt_models.unwrap(teacher)  # its name, for the logs and the summary
    arch = zskt_models.infer_arch(network.state_dict())[0]
    cfg = dataclasses.replace(cfg, teacher=arch or type(network).__name__)
    command = resume_command or shell_command("zskt.py", "--out", out.resolve(), "--resume")
    if arch is None and teacher_checkpoint is None:  # the command line cannot rebuild it
        command = f"train_zero_shot(..., out={str(out)!r}, resume=True) with the same teacher"
    try:
        with run_lock(out):
            if not resume:
                prepare_run_dir(out, overwrite=overwrite, hint=hint)
            with tee(out / "log.txt"):  # the console, also in the run directory
                state = open_run(cfg, teacher, test, out, resume, teacher_checkpoint, data_dir)
                saved = "no checkpoint had been written yet"
                if state:
                    saved = f"the last checkpoint, {out / 'checkpoint.pt'} (iteration " \
                            f"{state['iteration']}), stays"
                # From here on a first Ctrl-C or SIGTERM saves a checkpoint and stops cleanly.
                with StopOnSignal(saved) as stop:
                    return train(cfg, teacher, test, out, device, state, stop, command)
    finally:
        if isinstance(teacher, zskt_models.WithAttention):
            teacher.remove()  # the hooks come off the caller's classifier when the run ends


def open_run(cfg, teacher, test, out, resume, teacher_checkpoint, data_dir):
    """The checkpoint a resumed run continues from (None for a new run, or one that stopped
    before its first checkpoint); config.json, written where it is missing."""
    state = None
    if resume and (out / "checkpoint.pt").is_file():
        state = load_checkpoint(out / "checkpoint.pt")
        check_same_config(cfg, state.get("config", {}), out)
    elif resume:
        print(f"{out} holds no checkpoint yet, so this run starts from iteration 0")
    if not (out / "config.json").is_file():
        source = teacher_checkpoint or save_teacher_copy(teacher, cfg, test, out)
        write_json(out / "config.json", run_record(cfg, [cfg.seed], source, data_dir, test))
    return state


def graph_on(cfg, device, resume, out):
    """cfg.cuda_graph needs CUDA: a new run elsewhere is refused; a resumed one continues
    without it (its checkpoints are the same files either way)."""
    if cfg.cuda_graph and resume and not device.startswith("cuda"):
        print(f"--cuda-graph needs CUDA: this run continues on {device} without it (the same "
              f"maths)")
        return dataclasses.replace(cfg, cuda_graph=False)
    if cfg.cuda_graph:
        zskt_graph.require_cuda(device, hint="drop --cuda-graph (cuda_graph=False), or run on "
                                              "a machine with a GPU")
    return cfg


def check_same_config(cfg, saved, out):
    """A run resumes with the settings it started with (its schedules were built for them);
    cuda_graph changes how an iteration is launched, not what it computes."""
    diff = [f"{k}={saved[k]!r} (saved) vs {v!r} (given)" for k, v in dataclasses.asdict(cfg).items()
            if k in saved and k not in ("teacher", "cuda_graph") and saved[k] != v]
    if diff:
        raise UserError(f"resume: the config contradicts the run in {out}: {'; '.join(diff)}; "
                        f"pass the run's own config, or start a new out")


def as_teacher(teacher, attention_layers, test):
    """The teacher as Algorithm 1 sees it, a forward that returns (logits, attention maps): as it
    is if it does, else with the maps of `attention_layers` (or none) taken by hooks."""
    if attention_layers is not None:
        return zskt_models.WithAttention(teacher, attention_layers)
    x = zskt.normalize(test.images[:2].to(device_of(teacher)), test.mean, test.std)
    with torch.no_grad(), zskt.eval_mode(teacher):
        out = teacher(x)
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list)):
        return teacher
    return zskt_models.WithAttention(teacher, ())


def save_teacher_copy(teacher, cfg, test, out):
    """teacher.pt, so that the command line can resume a run started from Python; None for a
    teacher of an architecture this project cannot rebuild from its weights (resume from Python)."""
    network = zskt_models.unwrap(teacher)
    arch = zskt_models.infer_arch(network.state_dict())[0]
    if arch is None:
        return None
    saved = zskt_models.model_checkpoint(network, arch, cfg.dataset, test.mean, test.std,
                                         test.images.shape[-1], classes=list(test.classes))
    save_atomic(saved, out / "teacher.pt")
    return out / "teacher.pt"


class Interval:
    """The per-iteration statistics summed over the iterations since the last log step, on the
    device (adding never waits for it); means() divides by the iterations really summed."""

    def __init__(self, sums=None, count=0):
        self.sums, self.count = sums or {}, count

    def add(self, out):
        stats = iteration_stats(out)
        self.sums = {k: self.sums.get(k, 0) + v for k, v in stats.items()}
        self.count += 1

    def means(self):
        return {k: v / self.count for k, v in self.sums.items()}


def iteration_stats(out):
    """What the run logs of one iteration, on the device: both losses, the teacher's and the
    student's mean top-class probability on the pseudo batch, and the teacher's class counts."""
    t, s = out["teacher_probs"], out["student_probs"]
    return {"loss_generator": out["loss_generator"], "loss_student": out["loss_student"],
            "teacher_confidence": t.amax(1).mean(), "student_confidence": s.amax(1).mean(),
            # one_hot: bincount would wait for the device on CUDA
            "teacher_classes": F.one_hot(t.argmax(1), t.shape[1]).sum(0).float()}


class Networks(NamedTuple):
    teacher: torch.nn.Module
    student: torch.nn.Module
    generator: torch.nn.Module
    opts: zskt.Optimizers


def networks(cfg, teacher, test, device):
    """The frozen teacher, a new student and generator (seeded), and their optimizers. Where the
    two architectures' maps differ, both are wrapped to return the maps that pair (announced)."""
    channels_last = torch.channels_last  # ~1.3x faster convolutions, on CPUs too
    n_classes = count_classes(teacher, test)
    seed_everything(cfg.seed)
    teacher = teacher.to(device, memory_format=channels_last).eval().requires_grad_(False)
    student = zskt_models.build(cfg.student, n_classes).to(device, memory_format=channels_last)
    generator = zskt.Generator(cfg.z_dim, test.images.shape[-1])
    generator = generator.to(device, memory_format=channels_last)  # train mode throughout
    opts = zskt.optimizers(student, generator, cfg)
    with user_input():
        t, s, note = zskt_models.pair_for_attention(teacher, student, test.images.shape[-1],
                                                    cfg.beta)
    if note:
        print(note)
    return Networks(t, s, generator, opts)


def count_classes(model, test):
    """The width of the model's logits on two test images."""
    x = zskt.normalize(test.images[:2].to(device_of(model)), test.mean, test.std)
    with torch.no_grad(), zskt.eval_mode(model):
        return model(x)[0].shape[1]


def two_classes(network, outputs):
    """Why a network with fewer than two outputs is refused (one sentence)."""
    return (f"{network} has {plural(outputs, 'output')}, but zero-shot distillation and "
            f"transition curves need a classifier of at least two classes (with one, every "
            f"network predicts the same and there is nothing to transfer)")


def train(cfg, teacher, test, out, device, state, stop, command):
    """Algorithm 1 from the checkpoint `state` (or from iteration 0) to the end, then the final
    evaluation. Logs and checkpoints between iterations; stops cleanly on a signal."""
    nets = networks(cfg, teacher, test, device)
    parts = {"student": zskt_models.unwrap(nets.student), "generator": nets.generator,
             "opt_student": nets.opts.student, "opt_generator": nets.opts.generator,
             "sched_student": nets.opts.student_schedule,
             "sched_generator": nets.opts.generator_schedule}
    start, seconds, interval, last = 0, 0.0, Interval(), {}
    if state is not None:
        for k, v in parts.items():
            v.load_state_dict(state[k])
        start, seconds = state["iteration"], state["seconds"]
        interval = Interval({k: v.to(device) for k, v in state.get("sums", {}).items()},
                            state.get("count", 0))
        last = {k: v.to(device) for k, v in state.get("last", {}).items()}
        set_rng_state(state["rng"])
    looped = [torch.compile(m) if cfg.compile else m for m in nets[:3]]  # the same parameters
    log = RunLog(cfg, nets, test, out, start)
    curves = curves_cost(nets.student, nets.teacher, test, cfg)
    t0 = time.time() - seconds  # the run's clock goes on from the checkpoint's
    bar = Progress(cfg.iterations, "Algorithm 1", initial=start, extra=curves.seconds())
    # The state is loaded above: a CUDA graph is captured on the loaded tensors.
    algorithm_1 = zskt_graph.algorithm_1 if cfg.cuda_graph else zskt.algorithm_1
    for it, last in algorithm_1(*looped, nets.opts, cfg, first=start + 1):
        interval.add(last)  # no wait for the device
        bar.update()
        log_now = it % cfg.log_every == 0 or it == cfg.iterations
        save_now = it % cfg.checkpoint_every == 0 or it == cfg.iterations or stop.signal
        if log_now or save_now:
            check_finite(interval, it, stop)
        if log_now:
            note = log.row(it, interval, last, time.time() - t0)
            bar.extra = curves.seconds(log.agreeing())  # curves of the images that agree now
            bar.note(note)
            interval = Interval()
        if save_now:
            checkpoint(out / "checkpoint.pt", it, time.time() - t0, cfg, parts, interval, last)
            stop.saved = f"the last checkpoint, {out / 'checkpoint.pt'} (iteration {it}), stays"
        if stop.signal:
            bar.close()
            raise Stopped(f"{stop.signal} after iteration {it}; checkpoint saved; continue with: "
                          f"{command}", stop.signum)
    bar.close()
    if stop.signal:  # it came after the last iteration (or the run was resumed at its end)
        raise Stopped(f"{stop.signal} before the final evaluation; continue with: {command}",
                      stop.signum)
    stop.at_once = f"during the final evaluation, after the last checkpoint; continue with: " \
                   f"{command}"
    summary = final_evaluation(cfg, nets, test, out, log, last, t0)
    log.close()
    return Trained(zskt_models.unwrap(nets.student), nets.generator, summary)


def check_finite(interval, it, stop):
    """Checked before a checkpoint is written, so that the last good one stays."""
    means = interval.means()
    bad = [k for k in ("loss_generator", "loss_student") if not torch.isfinite(means[k])]
    if bad:
        kept = stop.saved.replace("stays", "is intact")
        raise UserError(f"{' and '.join(bad)} became nan or inf in iterations "
                        f"{it - interval.count + 1}-{it}; {kept} (a new --out with lower learning "
                        f"rates, or without --amp, may avoid it)")


def checkpoint(path, it, seconds, cfg, parts, interval, last):
    """Everything --resume needs: the networks, optimizers, schedules, every RNG state and the
    statistics of the log interval under way."""
    save_atomic({"iteration": it, "seconds": seconds, "config": dataclasses.asdict(cfg),
                 "rng": rng_state(), "sums": interval.sums, "count": interval.count,
                 "last": last,
                 # portable: a --cuda-graph run's optimizers saved as the eager path's
                 **{k: zskt_graph.portable(v.state_dict()) for k, v in parts.items()}}, path)


class RunLog:
    """What a run shows while it goes: metrics.csv, samples_<iteration>.png, training.png,
    TensorBoard, and the progress note."""

    def __init__(self, cfg, nets, test, out, start):
        self.cfg, self.nets, self.test, self.out = cfg, nets, test, out
        self.teacher_pred = zskt.predict(nets.teacher, test.images, test.mean, test.std)
        self.teacher_acc = (self.teacher_pred == test.labels).float().mean().item()
        self.device = device_of(nets.student)
        seeded = torch.Generator().manual_seed(cfg.seed)
        self.z_grid = torch.randn(64, cfg.z_dim, generator=seeded).to(self.device)
        self.rows = [r for r in read_rows(out / "metrics.csv") if int(r["iteration"]) <= start]
        with user_input():
            self.board = zskt_plots.tensorboard_writer(out) if cfg.tensorboard else None
        print(f"teacher {cfg.teacher}: {self.teacher_acc:.2%} test accuracy | student "
              f"{cfg.student} | {cfg.iterations} iterations from {start} on {self.device} | "
              f"run directory {out}")

    def row(self, it, interval, last, seconds):
        """A metrics.csv row for the log interval ending at iteration `it`; returns the note."""
        means = interval.means()
        fractions = (means.pop("teacher_classes") / self.cfg.batch_size).tolist()
        s_pred = zskt.predict(self.nets.student, self.test.images, self.test.mean, self.test.std)
        opts = self.nets.opts
        self.rows.append({
            "iteration": it, **{k: v.item() for k, v in means.items()},
            "student_test_acc": (s_pred == self.test.labels).float().mean().item(),
            "agreement": (s_pred == self.teacher_pred).float().mean().item(),
            # float: tensors under --cuda-graph
            "lr_student": float(opts.student_schedule.get_last_lr()[0]),
            "lr_generator": float(opts.generator_schedule.get_last_lr()[0]),
            **{f"teacher_class_{c}": h for c, h in enumerate(fractions)}, "seconds": seconds})
        write_csv(self.out / "metrics.csv", self.rows)
        grid = zskt_plots.save_samples(self.nets.generator, self.nets.teacher, self.z_grid,
                                       self.test, self.out / f"samples_{it:06d}.png",
                                       title=f"iteration {it}: the teacher's class and probability")
        zskt_plots.plot_training(self.rows, self.out / "training.png")
        if self.board:
            zskt_plots.log_tensorboard(self.board, self.rows[-1], grid, last, it)
        r = self.rows[-1]
        return (f"student {r['student_test_acc']:.2%} (agrees with teacher {r['agreement']:.2%})"
                f" | loss_S {r['loss_student']:.4f} | loss_G {r['loss_generator']:.4f}")

    def agreeing(self):
        """The test images on which student and teacher agreed at the last log step."""
        return round(self.rows[-1]["agreement"] * len(self.test.images))

    def close(self):
        if self.board:
            self.board.close()


def read_rows(path):
    """The rows of a metrics.csv, or none where there is no such file yet."""
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def final_evaluation(cfg, nets, test, out, log, last, t0):
    """student.pt, the transition curves and MTE, and summary.json, whose seconds are those of
    Algorithm 1 and of this evaluation since the clock `t0` (which resumes carry on)."""
    s_pred = zskt.predict(nets.student, test.images, test.mean, test.std)
    teacher_pred, teacher_acc = log.teacher_pred, log.teacher_acc
    student_acc = (s_pred == test.labels).float().mean().item()
    student = zskt_models.unwrap(nets.student)
    save_atomic(zskt_models.model_checkpoint(student, cfg.student, cfg.dataset, test.mean,
                                             test.std, test.images.shape[-1], test_acc=student_acc,
                                             seed=cfg.seed, iterations=cfg.iterations,
                                             classes=list(test.classes)),
                out / "student.pt")
    mte, n_images = transition_report(nets.student, nets.teacher, test, cfg, out)[:2]
    C = len(test.classes)

    def per_class(pred):
        return [(pred[test.labels == c] == c).float().mean().item() for c in range(C)]
    classes_last = last["teacher_probs"].argmax(1).bincount(minlength=C).tolist() if last else None
    summary = {"dataset": cfg.dataset, "teacher": cfg.teacher, "student": cfg.student,
               "iterations": cfg.iterations, "seed": cfg.seed, "device": str(log.device),
               "device_name": device_name(log.device), "teacher_test_acc": teacher_acc,
               "student_test_acc": student_acc,
               "student_teacher_ratio": student_acc / max(teacher_acc, 1e-12),
               "mte": mte, "mte_images": n_images, "mte_steps": cfg.mte_steps,
               "mte_step_size": cfg.mte_step_size, "mte_targets": cfg.mte_targets,
               "seconds": time.time() - t0, "classes": list(test.classes),
               "teacher_per_class_acc": per_class(teacher_pred),
               "student_per_class_acc": per_class(s_pred),
               "teacher_classes_last_pseudo_batch": classes_last,
               "config": dataclasses.asdict(cfg)}
    write_json(out / "summary.json", summary)
    return summary


def device_of(model):
    """The device of a network's parameters."""
    return next(model.parameters()).device


TRIAL = 32  # trajectories that time a step of the transition curves on a CPU


class CurvesCost(NamedTuple):
    """What transition curves cost: one step of a batch of `batch` trajectories takes
    `step_seconds`; each image has `targets` trajectories of `steps` steps; at most `images`."""
    step_seconds: float
    batch: int
    targets: int
    steps: int
    images: int

    def seconds(self, agreeing=None):
        """Seconds for the curves of the images that agree (all `images` when not known yet)."""
        n = self.images if agreeing is None else min(self.images, agreeing)
        return self.step_seconds * math.ceil(n * self.targets / self.batch) * self.steps


def curves_cost(stepped, observed, test, cfg):
    """The cost of the final transition curves, for the ETA, timed on two real steps of a few
    trajectories (three recordings, two updates: a step records once and updates once), far less
    than the curves themselves. On a CPU a step costs in proportion to its batch, so TRIAL
    trajectories time it; on a GPU a batch of zskt.CHUNK costs about what a small one does, so a
    whole batch does."""
    images, targets = min(cfg.mte_images, len(test.images)), count_classes(stepped, test) - 1
    if images == 0 or targets < 1:
        return CurvesCost(0.0, 1, max(targets, 0), cfg.mte_steps, 0)
    device = device_of(stepped)
    batch = min(images * targets, zskt.CHUNK if device.type != "cpu" else TRIAL)
    x = zskt.normalize(test.images[:1].to(device), test.mean, test.std).repeat(batch, 1, 1, 1)
    pairs = torch.arange(batch, device=device) % (targets + 1)  # a few classes as targets
    curves = torch.empty(2, batch, 3, device=device)  # the last recording has no update
    with zskt.eval_mode(stepped), zskt.eval_mode(observed):
        t = time.time()
        zskt.trajectory(stepped, observed, x, pairs, cfg.mte_step_size, curves)
        curves.sum().item()  # waits for the device
        step = (time.time() - t) / 2
    return CurvesCost(step, batch, targets, cfg.mte_steps, images)


def transition_report(stepped, observed, test, cfg, out, title="student", agreeing=None):
    """Transition curves on cfg.mte_images agreeing test images (`agreeing`, where the caller
    has found them: zskt.agreeing_images) -> curves.npz, transition.png. Returns (MTE, the number
    of images N behind it, p_stepped, p_observed)."""
    if cfg.mte_images == 0:
        print("no transition curves: --mte-images is 0 (MTE = n/a)")
        return float("nan"), 0, None, None
    x, y, _ = agreeing or zskt.agreeing_images(stepped, observed, test, cfg.mte_images)
    if len(x) == 0:
        print("no test image on which both networks agree, so no transition curves (MTE = n/a)")
        return float("nan"), 0, None, None
    targets = len(test.classes) - 1
    bar = Progress(math.ceil(len(x) * targets / zskt.CHUNK) * cfg.mte_steps,
                   f"transition curves ({title})", unit="step")
    labels = y if cfg.mte_targets == "label" else None
    p_s, p_o = zskt.transition_curves(stepped, observed, x, cfg.mte_steps, cfg.mte_step_size,
                                      labels, progress=bar)
    bar.close()
    np.savez_compressed(out / "curves.npz", p_stepped=p_s.numpy(), p_observed=p_o.numpy(),
                        labels=y.numpy())
    zskt_plots.plot_transition_curves([(title, p_s, p_o)], out / "transition.png")
    return zskt.mean_transition_error(p_s, p_o), len(x), p_s, p_o


def mte_words(n_images, cfg):
    """'N = 100 images, K = 30 steps, xi = 1': what an MTE stands on."""
    return (f"N = {plural(n_images, 'image')}, K = {plural(cfg.mte_steps, 'step')}, "
            f"xi = {cfg.mte_step_size:g}")


# ----------------------------------------------------------------------------------------------
# The command line: python zskt.py [--dataset D] [flags]; python zskt.py curves ...

def validate(cfg):
    """Bad values are refused before any compute is spent (ValueError, one sentence)."""
    at_least = dict(iterations=1, batch_size=2, n_g=1, n_s=1, z_dim=1, log_every=1,
                    checkpoint_every=1, mte_steps=1, beta=0, mte_images=0)
    for name, low in at_least.items():
        value = getattr(cfg, name)
        if not value >= low or (name == "beta" and not math.isfinite(value)):
            why = " (BatchNorm needs two examples)" if name == "batch_size" else ""
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, not {value}{why}")
    for name in ("lr_student", "lr_generator", "grad_clip", "temperature", "mte_step_size"):
        if not 0 < getattr(cfg, name) < math.inf:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, not "
                             f"{getattr(cfg, name)}")
    if cfg.cuda_graph and cfg.compile:
        raise ValueError("--cuda-graph and --compile cannot be combined (torch cannot capture "
                         "these compiled networks in a CUDA graph of their own); pass one of them")
    if cfg.mte_targets not in ("label", "predicted"):
        raise ValueError(f"--mte-targets must be 'label' (the author's code) or 'predicted' (the "
                         f"paper's text), not {cfg.mte_targets!r}")
    if not is_seed(cfg.seed):
        raise ValueError(f"--seed {cfg.seed}: seeds must be whole numbers from 0 to 2**32 - 1")
    zskt_models.build(cfg.teacher)  # unknown architectures are refused here
    zskt_models.build(cfg.student)
    # One spelling per network (wrn40_2 is wrn-40-2): file names and summaries agree.
    return dataclasses.replace(cfg, teacher=zskt_models.canonical(cfg.teacher),
                               student=zskt_models.canonical(cfg.student))


def parse_args(argv):
    """(args, the Config fields given on the command line). --help shows the defaults of the
    dataset named by --dataset (shapes when none is)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--dataset")
    dataset = pre.parse_known_args(argv)[0].dataset
    defaults = zskt.make_config(dataset if dataset in zskt.PRESETS else "shapes")
    p = argparse.ArgumentParser(prog="zskt.py", description="Zero-shot knowledge transfer "
                                "(Micaelli & Storkey, NeurIPS 2019): train a student to match a "
                                "teacher without any data. `python zskt.py curves -h`: transition "
                                "curves of saved networks.")
    p.add_argument("--dataset", choices=zskt.DATASETS, help="shapes: the built-in offline data "
                   "(default, unless the teacher's file names its dataset); cifar10, cifar100, "
                   "svhn: downloaded to --data-dir (svhn needs scipy); folder: your images in "
                   "--data-dir/{train,test}/<class>/")
    for f in dataclasses.fields(zskt.Config):
        if f.name == "dataset":
            continue
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        text = f"{f.metadata['help']} (default for {defaults.dataset}: {default})"
        if f.type is bool:
            p.add_argument(flag, action="store_const", const=True, help=text)
        else:
            choices = ("label", "predicted") if f.name == "mte_targets" else None
            p.add_argument(flag, type=f.type, help=text, choices=choices)
    p.add_argument("--seeds", type=int, nargs="+", help="several runs one after another, seed<k>/ "
                   "each, and aggregate.json with the mean and population std over seeds")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, "
                   "cuda, cuda:N or mps")
    p.add_argument("--data-dir", help="where the datasets are, or are downloaded to (./data)")
    p.add_argument("--teacher-checkpoint", help="the teacher's file: ours, the author's, or the "
                   "literature's checkpoints/pretrained/<dataset>_<arch>.pth (default: where "
                   "train_teacher.py saves it, checkpoints/<dataset>-<arch>.pt)")
    p.add_argument("--image-size", type=int, help="--dataset folder: the size images are resized "
                   "to (default: the teacher's; 32 for the author's; the aspect ratio is not kept)")
    p.add_argument("--allow-dataset-mismatch", action="store_true",
                   help="use a teacher whose file says it was trained on another dataset, image "
                   "size or classes")
    normalisation_flags(p)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<teacher>-<student>-<date>"
                   "-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last "
                   "checkpoint")
    p.add_argument("--start-or-resume", action="store_true", help="resume the run in --out if it "
                   "has one, else start it (for schedulers that may run a command twice)")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds and start "
                   "afresh")
    args = p.parse_args(argv)
    fields = [f.name for f in dataclasses.fields(zskt.Config)]
    return args, {k: getattr(args, k) for k in fields if getattr(args, k) is not None}


class Setup(NamedTuple):
    """What the command line resolved before any compute: the run's Config, its seeds, the
    teacher's file, the data directory, the image size asked for (None: the teacher's), and the
    teacher's normalisation where it was given (mean, std, where from; None: teacher_mean_std's
    rules)."""
    cfg: zskt.Config
    seeds: list
    teacher_path: Path
    data_dir: Path
    image_size: int
    normalisation: tuple = None


def normalisation_flags(p):
    """--mean and --std, in zskt.py and zskt.py curves."""
    for name in ("mean", "std"):
        p.add_argument(f"--{name}", type=float, nargs=3, metavar=("R", "G", "B"),
                       help=f"the per-channel {name} of the teacher's input normalisation, for a "
                       f"file that neither stores it nor names a dataset (default: the file's "
                       f"own, else the constants of the dataset it names, else the run's)")


def given_normalisation(args):
    """(mean, std, where from) of --mean/--std, checked; None where they are not given."""
    if (args.mean is None) != (args.std is None):
        raise UserError("--mean and --std go together: pass both (three numbers each, for the R, "
                        "G and B channels) or neither")
    if args.mean is None:
        return None
    if not all(map(math.isfinite, args.mean)) or not all(0 < v < math.inf for v in args.std):
        raise UserError(f"--mean takes three finite numbers and --std three positive ones, not "
                        f"{' '.join(map(str, args.mean))} and {' '.join(map(str, args.std))}")
    return tuple(args.mean), tuple(args.std), "--mean/--std"


def run_config(saved):
    """The Config of a saved run; fields it does not know are ignored, missing ones default."""
    fields = {f.name for f in dataclasses.fields(zskt.Config)}
    return zskt.Config(**{k: v for k, v in saved["config"].items() if k in fields})


def run_record(cfg, seeds, teacher_path, data_dir, test):
    """config.json: what --resume needs, with absolute paths so that any directory will do, and
    the teacher's normalisation (so that a resume needs no --mean/--std)."""
    teacher = str(Path(teacher_path).resolve()) if teacher_path else None
    return {"config": dataclasses.asdict(cfg), "seeds": seeds, "teacher_checkpoint": teacher,
            "data_dir": str(Path(data_dir).resolve()), "image_size": test.images.shape[-1],
            "mean": [float(v) for v in test.mean], "std": [float(v) for v in test.std]}


def read_run(out):
    """The config.json of a run directory, for --resume."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise UserError(f"--resume needs --out to be a zskt.py run directory, and {path} does not "
                        f"exist")
    damaged = UserError(f"{path} is not a zskt.py run's configuration (damaged?); start a new "
                        f"--out")
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise damaged from None
    if not isinstance(saved, dict) or "config" not in saved or "teacher_checkpoint" not in saved:
        raise damaged
    return saved


def resumed_setup(args, given):
    """The saved run's settings; flags that contradict them are refused, naming each."""
    if not args.out:
        raise UserError("--resume needs --out, the run directory to continue")
    saved = read_run(args.out)
    paths = {"teacher_checkpoint": args.teacher_checkpoint, "data_dir": args.data_dir}
    diff = [f"{k}={saved['config'].get(k)!r} (saved) vs {v!r} (given)" for k, v in given.items()
            if saved["config"].get(k) != v and k != "cuda_graph"]  # how, not what: either way
    diff += [f"{k}={saved.get(k)} (saved) vs {Path(v).resolve()} (given)"
             for k, v in paths.items()
             if v is not None and Path(v).resolve() != Path(saved.get(k) or "./data").resolve()]
    diff += [f"{k}={saved.get(k)} (saved) vs {v} (given)"
             for k, v in (("seeds", args.seeds), ("image_size", args.image_size),
                          ("mean", args.mean), ("std", args.std))
             if v not in (None, saved.get(k))]
    if diff:
        raise UserError(f"--resume: the flags contradict the saved run: {'; '.join(diff)}; drop "
                        f"those flags or start a new --out")
    if saved["teacher_checkpoint"] is None:
        raise UserError(f"{args.out} was started from Python with a teacher whose file this "
                        f"project cannot rebuild; resume it from Python with resume=True")
    teacher_path = Path(saved["teacher_checkpoint"])
    if not teacher_path.is_file():
        raise UserError(f"the run's teacher file {teacher_path} is gone; put it back, or start a "
                        f"new --out")
    with user_input():
        cfg = dataclasses.replace(run_config(saved), **{k: v for k, v in given.items()
                                                        if k == "cuda_graph"})
    seeds = saved.get("seeds") or [cfg.seed]
    data_dir = Path(saved.get("data_dir") or "./data").resolve()
    normalisation = None
    if saved.get("mean") and saved.get("std"):
        normalisation = (tuple(saved["mean"]), tuple(saved["std"]), "the run's config.json")
    return Setup(cfg, seeds, teacher_path, data_dir, saved.get("image_size"), normalisation)


def new_setup(args, given):
    """A new run's settings, checked; the teacher's file must exist."""
    if args.seeds and "seed" in given:
        raise UserError("--seed and --seeds contradict each other; pass one of them")
    for seed in args.seeds or []:
        check_seed(seed, "--seeds")
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed; give each "
                        f"seed once")
    normalisation = given_normalisation(args)
    dataset = given.get("dataset") or dataset_of(args.teacher_checkpoint) or "shapes"
    with user_input():
        cfg = validate(zskt.make_config(**{**given, "dataset": dataset}))
    check_folder_flags(cfg.dataset, args.data_dir, args.image_size)
    data_dir = Path(args.data_dir or "./data").resolve()
    default = default_teacher_path(cfg.dataset, cfg.teacher, data_dir)
    teacher_path = Path(args.teacher_checkpoint or default).resolve()
    if args.teacher_checkpoint and not teacher_path.is_file():
        raise UserError(f"--teacher-checkpoint: no file at {teacher_path}")
    if not teacher_path.is_file():  # where train_teacher.py saves it, relative to this directory
        train = shell_command("train_teacher.py", "--dataset", cfg.dataset, "--arch", cfg.teacher,
                              *(["--data-dir", data_dir] if cfg.dataset == "folder" else []),
                              *(["--image-size", args.image_size] if args.image_size else []))
        raise UserError(f"no teacher checkpoint at {teacher_path}; train one with: cd "
                        f"{shlex.quote(str(Path.cwd()))} && {train}, or pass --teacher-checkpoint")
    return Setup(cfg, args.seeds or [cfg.seed], teacher_path, data_dir, args.image_size,
                 normalisation)


def dataset_of(teacher_checkpoint):
    """The dataset a teacher's file names (in its metadata or, for the literature's shared
    teachers, in its file name), or None."""
    if not teacher_checkpoint or not Path(teacher_checkpoint).is_file():
        return None
    return zskt_models.load_model(teacher_checkpoint)[1].get("dataset")


def check_folder_flags(dataset, data_dir, image_size):
    """--data-dir and --image-size for folder datasets (both scripts)."""
    if dataset == "folder" and data_dir is None:
        raise UserError("--dataset folder needs --data-dir DIR, a folder with DIR/train/<class>/* "
                        "and DIR/test/<class>/* images")
    if image_size is not None and (dataset != "folder" or image_size < 8 or image_size % 4):
        raise UserError(f"--image-size applies to --dataset folder only, and must be a multiple "
                        f"of 4 of at least 8 (the generator upsamples twice by 2), not "
                        f"{image_size}")


def default_teacher_path(dataset, arch, data_dir="./data"):
    """Where train_teacher.py saves a teacher by default, and where zskt.py looks for it. A
    folder's name carries a hash of its full path, so two folders called `images` never share."""
    import hashlib
    if dataset == "folder":
        where = Path(data_dir).resolve()
        digest = hashlib.sha1(str(where).encode()).hexdigest()[:6]
        dataset = f"folder-{where.name}-{digest}"
    return Path("checkpoints") / f"{dataset}-{arch}.pt"


def teacher_mean_std(meta, dataset, path, given=None):
    """(mean, std, where they come from) of a network's input normalisation: the constants its
    file stores (where from: None; `given` ones that contradict them are refused), else `given`
    (--mean/--std, or a resumed run's config.json), else the constants of the dataset its file
    names (its metadata or, for the literature's teachers, its name: cifar10_resnet34.pth), even
    on --dataset folder (a user's own copy of that dataset as image files), else the run's."""
    if "mean" in meta and "std" in meta:
        own = tuple(map(float, meta["mean"])), tuple(map(float, meta["std"]))
        if given is not None and tuple(map(tuple, given[:2])) != own:
            raise UserError(f"{path} stores its own normalisation (mean {words(own[0])}, std "
                            f"{words(own[1])}), which {given[2]} contradicts; drop --mean and "
                            f"--std")
        return (*own, None)
    if given is not None:
        return given
    named = meta.get("dataset")
    if named in zskt.MEAN_STD:
        return (*zskt.MEAN_STD[named], f"the constants of {named}, which {Path(path).name} names")
    if dataset in zskt.MEAN_STD:
        return (*zskt.MEAN_STD[dataset], f"the constants of {dataset}, the dataset of this run")
    raise UserError(f"{path} neither stores its normalisation constants nor names a dataset; pass "
                    f"the mean and std it was trained with as --mean R G B --std R G B")


def words(values):
    """'(0.4914, 0.4822, 0.4465)': numbers as a user reads them."""
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def say_normalisation(path, mean, std, source):
    """One line where the normalisation did not come from the file itself."""
    if source:
        print(f"{Path(path).name}: normalisation mean {words(mean)}, std {words(std)} ({source})")


def check_network_file(meta, dataset, image_size, classes, path, allow):
    """A teacher or student file trained on other data (its file names another dataset, image
    size or class names) is refused, naming both, unless allowed. A folder can hold any dataset
    (a user's copy of CIFAR-10 as image files), so on --dataset folder the name of the file's
    dataset is not compared, only its image size and, where the file stores them, its classes."""
    trained = [(k, meta[k]) for k, v in (("dataset", dataset), ("image_size", image_size))
               if meta.get(k) not in (None, v) and (k, dataset) != ("dataset", "folder")]
    ours = ""
    if meta.get("classes") is not None and list(meta["classes"]) != list(classes):
        trained.append(("classes", f"({listed(meta['classes'])})"))
        ours = f", classes ({listed(classes)})"
    if trained and not allow:
        raise UserError(f"{path} was trained on {', '.join(f'{k} {v}' for k, v in trained)}, but "
                        f"this run uses dataset {dataset} (image size {image_size}{ours}); pass "
                        f"the matching --dataset, another file, or --allow-dataset-mismatch")


def load_teacher(setup, given, allow_mismatch):
    """(teacher, the TestSet of the run's dataset in the teacher's normalisation)."""
    teacher, meta = zskt_models.load_model(setup.teacher_path, given.get("teacher"))
    found, n_classes = zskt_models.infer_arch(teacher.state_dict())
    if n_classes < 2:
        raise UserError(two_classes(f"{setup.teacher_path} ({found})", n_classes))
    cfg = setup.cfg
    size = setup.image_size or meta.get("image_size") or 32
    with user_input():
        images, labels, classes = zskt.load_dataset(cfg.dataset, "test", setup.data_dir, size)
    if n_classes != len(classes):
        raise UserError(f"{setup.teacher_path} holds a {found} with {n_classes} classes, but a "
                        f"network with {len(classes)} classes was expected ({cfg.dataset}); pass "
                        f"the matching file")
    check_network_file(meta, cfg.dataset, images.shape[-1], classes, setup.teacher_path,
                       allow_mismatch)
    cfg.teacher = found
    mean, std, source = teacher_mean_std(meta, cfg.dataset, setup.teacher_path,
                                         setup.normalisation)
    say_normalisation(setup.teacher_path, mean, std, source)
    return teacher, zskt.TestSet(images, labels, classes, mean, std)


def main(argv=None):
    """python zskt.py [flags]: one run, or one per --seeds; `curves` for transition curves."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["curves"]:
        return curves_main(argv[1:])
    args, given = parse_args(argv)
    device = resolve_device(args.device)
    if args.start_or_resume:  # a scheduler may run one command twice: it continues the first run
        args.resume = args.out is not None and (Path(args.out) / "config.json").is_file()
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if args.out and not args.resume:  # refused before the teacher and the data are loaded
        check_run_dir(args.out, args.overwrite, CLI_HINT)
    setup = resumed_setup(args, given) if args.resume else new_setup(args, given)
    teacher, test = load_teacher(setup, given, args.allow_dataset_mismatch or args.resume)
    cfg = setup.cfg
    out = Path(args.out or f"runs/{cfg.dataset}-{cfg.teacher}-{cfg.student}-"
                           f"{time.strftime('%Y%m%d-%H%M%S')}")
    command = shell_command("zskt.py", "--out", out.resolve(), "--resume")

    def run(seed, run_dir, resume):
        if resume and (run_dir / "summary.json").is_file():  # finished earlier: nothing to redo
            print(f"{run_dir} finished earlier")
            return json.loads((run_dir / "summary.json").read_text())
        trained = train_zero_shot(dataclasses.replace(cfg, seed=seed), teacher, test, run_dir,
                                  device, resume, args.overwrite,
                                  teacher_checkpoint=setup.teacher_path, data_dir=setup.data_dir,
                                  resume_command=command, hint=CLI_HINT)
        return trained.summary

    if len(setup.seeds) == 1:
        summary = run(setup.seeds[0], out, args.resume)
        with tee(out / "log.txt"):
            return print_report([summary], out)
    with run_lock(out):
        if not args.resume:
            prepare_run_dir(out, overwrite=args.overwrite, hint=CLI_HINT)
            write_json(out / "config.json", run_record(cfg, setup.seeds, setup.teacher_path,
                                                       setup.data_dir, test))
        with tee(out / "log.txt"):
            summaries = []
            for i, seed in enumerate(setup.seeds, 1):
                print(f"== seed {seed} ({i} of {len(setup.seeds)}): {out / f'seed{seed}'}"
                      + seeds_left(summaries, len(setup.seeds) - i))
                run_dir = out / f"seed{seed}"
                summaries.append(run(seed, run_dir, run_dir.exists()))
            keys = ("teacher_test_acc", "student_test_acc", "student_teacher_ratio", "mte")
            write_json(out / "aggregate.json", {"seeds": setup.seeds, **{
                k: over_seeds([s[k] for s in summaries]) for k in keys}})
            print_report(summaries, out)


def seeds_left(summaries, left):
    """What the progress bar's ETA, which is one seed's, leaves out: the seeds after this one."""
    if not left:
        return ""
    took = [s["seconds"] for s in summaries if s.get("seconds")]
    if not took:
        return f"; the ETA below is this seed's, with {plural(left, 'more seed')} after it"
    return f"; this seed and the {left} after it: about {format_time(np.mean(took) * (left + 1))}"


def print_report(summaries, out):
    """The end of a run on the console: accuracies, ratio, MTE (with its N and K), time, files."""
    s, n = summaries[0], len(summaries)

    def show(key, fmt):
        m = over_seeds([x[key] for x in summaries])
        if m["mean"] is None:
            return "n/a"
        spread = (f" +- {m['std']:{fmt}} (mean +- population std over {plural(m['n'], 'seed')})"
                  if n > 1 else "")  # the seeds with a value (an MTE needs agreeing images)
        return f"{m['mean']:{fmt}}" + spread

    def mte(x):
        value = x["mte"]
        if value is None or not math.isfinite(value):
            return "n/a"
        cfg = run_config(x)
        return f"{value:.3f} ({mte_words(x.get('mte_images', cfg.mte_images), cfg)})"

    lines = ["", f"== {s['dataset']}: {s['teacher']} -> {s['student']} ==",
             f"teacher test accuracy        {show('teacher_test_acc', '.2%')}",
             f"student test accuracy        {show('student_test_acc', '.2%')}  (zero-shot: no "
             f"real image seen)",
             f"student / teacher ratio      {show('student_teacher_ratio', '.3f')}",
             f"mean transition error (MTE)  {show('mte', '.3f') if n > 1 else mte(s)}",
             f"time                         {format_time(sum(x['seconds'] for x in summaries))}"
             f"  (Algorithm 1 and the final evaluation{' of every seed' if n > 1 else ''}, "
             f"resumes included)"]
    lines += [f"  seed {x['seed']}: student {x['student_test_acc']:.2%}, MTE {mte(x)}"
              for x in summaries if n > 1]
    where, prefix = (Path(out), "") if n == 1 else (Path(out) / f"seed{s['seed']}", "seed*/")
    names = sorted({re.sub(r"_\d+\.png$", "_*.png", p.name) for p in where.iterdir()
                    if not p.name.startswith(".")})
    files = [prefix + f for f in names] + (["aggregate.json"] if n > 1 else [])
    print("\n".join(lines + [f"written to {out}/: " + ", ".join(files)]))


# ----------------------------------------------------------------------------------------------
# python zskt.py curves: transition curves and MTE of saved networks against a teacher.

def curves_parser():
    p = argparse.ArgumentParser(prog="zskt.py curves", description="Transition curves and MTE "
                                "(Algorithm 2, Section 4.4; Figure 4, Table 2) of saved networks "
                                "that are stepped on (e.g. a zero-shot and a KD+AT student) "
                                "against a teacher that is only observed.")
    p.add_argument("--teacher-checkpoint", required=True, help="the teacher's file (observed)")
    p.add_argument("--student-checkpoint", required=True, nargs="+", help="the files of the "
                   "networks stepped on")
    p.add_argument("--names", nargs="+", help="panel titles and folder names, one per "
                   "--student-checkpoint (default: the file names)")
    p.add_argument("--dataset", choices=zskt.DATASETS, help="default: the dataset the teacher's "
                   "file names")
    p.add_argument("--data-dir", default="./data", help="where the datasets are (./data)")
    p.add_argument("--images", type=int, default=1000, help="test images both networks agree on "
                   "(N; paper: 1000; start with 100 on a CPU)")
    p.add_argument("--steps", type=int, default=100, help="gradient steps per curve (K; paper: "
                   "100; start with 30 on a CPU)")
    p.add_argument("--step-size", type=float, default=1.0, help="step size (xi; paper: 1)")
    p.add_argument("--mte-targets", choices=("label", "predicted"), default="label",
                   help=dict((f.name, f.metadata["help"])
                             for f in dataclasses.fields(zskt.Config))["mte_targets"])
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, "
                   "cuda, cuda:N or mps")
    p.add_argument("--allow-dataset-mismatch", action="store_true", help="use networks whose "
                   "files say they were trained on another dataset, image size or classes")
    normalisation_flags(p)
    p.add_argument("--out", help="directory for transition.png, mte.json and one folder of curves "
                   "per network (default runs/curves-<date>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="delete what --out holds first")
    return p


def curves_arguments(argv):
    args = curves_parser().parse_args(argv)
    for flag, value in (("--images", args.images), ("--steps", args.steps)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}")
    if not 0 < args.step_size < math.inf:
        raise UserError(f"--step-size must be a positive number, not {args.step_size}")
    args.names = args.names or panel_names(args.student_checkpoint)
    if len(args.names) != len(args.student_checkpoint):
        raise UserError(f"--names gives {len(args.names)} names for "
                        f"{len(args.student_checkpoint)} --student-checkpoint files; give one "
                        f"name per file")
    bad = [n for n in args.names if not re.fullmatch(r"[\w+-][\w.+-]*", n)]
    bad = bad or sorted({n for n in args.names if args.names.count(n) > 1})
    if bad:
        raise UserError(f"--names {' '.join(bad)}: each name becomes a folder, so use distinct "
                        f"names of letters, digits and . _ + -")
    return args


def panel_names(paths):
    """Default panel names: the file names, with their folder's name where two files share one."""
    stems = [Path(p).stem for p in paths]
    names = [f"{Path(p).resolve().parent.name}-{s}" if stems.count(s) > 1 else s
             for p, s in zip(paths, stems)]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names, 1)]


def curves_main(argv):
    """Checks --out, loads the networks, tells what the curves will cost, then writes --out. An
    interrupted run keeps none of its curves and prints the command that starts it again; a
    directory it did not create keeps a marker (.unfinished), so the same command starts again,
    and one it created is removed."""
    args = curves_arguments(argv)
    out = Path(args.out or f"runs/curves-{time.strftime('%Y%m%d-%H%M%S')}")
    hint = "pass --overwrite to replace them, or another --out"
    check_run_dir(out, args.overwrite or (out / ".unfinished").exists(), hint)  # before loading
    device = resolve_device(args.device)
    full_fp32()
    given = given_normalisation(args)
    teacher, meta = zskt_models.load_model(args.teacher_checkpoint)
    found, n_classes = zskt_models.infer_arch(teacher.state_dict())
    if n_classes < 2:
        raise UserError(two_classes(f"{args.teacher_checkpoint} ({found})", n_classes))
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise UserError(f"{args.teacher_checkpoint} does not say which dataset it was trained on; "
                        f"pass --dataset")
    with user_input():
        images, labels, classes = zskt.load_dataset(dataset, "test", args.data_dir,
                                                    meta.get("image_size") or 32)
    check_network_file(meta, dataset, images.shape[-1], classes, args.teacher_checkpoint,
                       args.allow_dataset_mismatch)
    mean, std, source = teacher_mean_std(meta, dataset, args.teacher_checkpoint, given)
    say_normalisation(args.teacher_checkpoint, mean, std, source)
    test = zskt.TestSet(images, labels, classes, mean, std)
    students = []
    for path in args.student_checkpoint:
        student, s_meta = zskt_models.load_model(path, num_classes=n_classes)
        check_network_file(s_meta, dataset, images.shape[-1], classes, path,
                           args.allow_dataset_mismatch)
        students.append(student.to(device))
    teacher = teacher.to(device)
    cfg = dataclasses.replace(zskt.Config(), mte_images=args.images, mte_steps=args.steps,
                              mte_step_size=args.step_size, mte_targets=args.mte_targets)
    agreeing = [zskt.agreeing_images(s, teacher, test, args.images) for s in students]
    estimate = sum(curves_cost(s, teacher, test, cfg).seconds(len(a[0]))
                   for s, a in zip(students, agreeing))
    print(f"transition curves of {plural(len(students), 'network')}: up to "
          f"{max(len(a[0]) for a in agreeing)} images x {len(classes) - 1} targets x "
          f"{plural(args.steps, 'step')} each, about {format_time(estimate)} on {device}")
    again = shell_command("zskt.py", "curves", *curves_flags(args, dataset, out))
    created = not out.exists()
    with run_lock(out, keep=(".lock", ".unfinished")):
        unfinished = (out / ".unfinished").exists()
        if unfinished:
            print(f"{out} holds an interrupted curves run; starting it again")
        prepare_run_dir(out, overwrite=args.overwrite or unfinished, hint=hint)
        (out / ".unfinished").touch()
        try:
            with StopOnSignal(at_once=f"during the transition curves, of which none count; "
                                      f"start them again with: {again}"):
                write_curves(args, students, agreeing, teacher, test, cfg, out, dataset, device)
        except Stopped:
            if created:  # nothing of it is worth keeping, and nothing should block `again`
                shutil.rmtree(out, ignore_errors=True)
            raise
        (out / ".unfinished").unlink()
    print(f"written to {out}/: " + ", ".join(sorted(p.name for p in out.iterdir()
                                                     if not p.name.startswith("."))))


def curves_flags(args, dataset, out):
    """The flags of a `zskt.py curves` command that starts this one again from any directory:
    absolute paths, the names it chose, the --out it chose."""
    flags = ["--teacher-checkpoint", Path(args.teacher_checkpoint).resolve(),
             "--student-checkpoint", *(Path(p).resolve() for p in args.student_checkpoint),
             "--names", *args.names]
    defaults = curves_parser().parse_args(["--teacher-checkpoint", "t", "--student-checkpoint",
                                           "s"])
    for name in ("dataset", "images", "steps", "step_size", "mte_targets", "device"):
        if getattr(args, name) != getattr(defaults, name):
            flags += [f"--{name.replace('_', '-')}", getattr(args, name)]
    if dataset != "shapes":  # the built-in data needs no folder
        flags += ["--data-dir", Path(args.data_dir).resolve()]
    for name in ("mean", "std"):
        flags += [f"--{name}", *getattr(args, name)] if getattr(args, name) else []
    flags += ["--allow-dataset-mismatch"] if args.allow_dataset_mismatch else []
    return flags + ["--out", Path(out).resolve()]


def write_curves(args, students, agreeing, teacher, test, cfg, out, dataset, device):
    """One folder of curves per network, transition.png with a panel each, and mte.json (its
    paths absolute and resolved, as config.json's)."""
    t0, panels, result, images = time.time(), [], {}, {}
    for student, found, name in zip(students, agreeing, args.names):
        (out / name).mkdir()
        mte, n, p_s, p_o = transition_report(student, teacher, test, cfg, out / name, name,
                                             found)
        result[name], images[name] = mte, n
        if p_s is not None:
            panels.append((name, p_s, p_o))
        print(f"{name}: MTE {mte:.4f} against {args.teacher_checkpoint} ({mte_words(n, cfg)}, "
              f"targets: {args.mte_targets})")
    if panels:
        zskt_plots.plot_transition_curves(panels, out / "transition.png")
    files = [str(Path(p).resolve()) for p in args.student_checkpoint]
    write_json(out / "mte.json", {
        **vars(args), "teacher_checkpoint": str(Path(args.teacher_checkpoint).resolve()),
        "student_checkpoint": files, "data_dir": str(Path(args.data_dir).resolve()),
        "out": str(out.resolve()), "mean": list(test.mean), "std": list(test.std), "mte": result,
        "images": images, "dataset": dataset, "seconds": time.time() - t0,
        "device_name": device_name(device), "files": dict(zip(args.names, files))})


if __name__ == "__main__":
    run_cli(main)
