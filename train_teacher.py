"""Everything that touches training data: the teachers, the scratch students and the few-shot KD+AT
baselines of the paper (Section 4.1), with the recipe of the author's FewShotKnowledgeTransfer
code (main.py, solver.py), and the fine-tuning of a zero-shot student on M images per class.

    python train_teacher.py                                     # demo teacher on shapes (35 s)
    python train_teacher.py --dataset cifar10 --arch wrn-40-2   # a teacher of Table 1 (200 epochs)
    python train_teacher.py --dataset cifar10 --arch wrn-16-1 --samples-per-class 200  # no teacher
    python train_teacher.py --dataset cifar10 --arch wrn-16-1 --samples-per-class 200 \\
        --distill-from checkpoints/cifar10-wrn-40-2.pt                                 # KD+AT
    python train_teacher.py --dataset cifar10 --samples-per-class 10 \\
        --finetune-from runs/X/student.pt                                  # Ours, M = 10
    python train_teacher.py --dataset cifar100 --arch resnet34  # a teacher of the later literature

Runs live in --out (default runs/<name>): checkpoint.pt holds everything --resume needs and
model.pt the final model. A full-data run without a teacher or --out is also saved where zskt.py
looks for a teacher, checkpoints/<dataset>-<arch>.pt.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import zskt
import zskt_models
import zskt_run
from zskt_utils import (Progress, Stopped, StopOnSignal, UserError, check_seed, device_name,
                        full_fp32, listed, load_checkpoint, plural, prepare_run_dir, resolve_device,
                        rng_state, run_cli, run_lock, save_atomic, seed_everything, set_rng_state,
                        shell_command, tee, user_input, write_json)

# Section 4.1: SGD(0.1, momentum 0.9, wd 5e-4), lr x0.2 at 30/60/80% of the epochs, batch 128.
PRESETS = {
    "cifar10": dict(epochs=200, lr=0.1, batch_size=128, augment=True),
    "cifar100": dict(epochs=200, lr=0.1, batch_size=128, augment=True),  # CIFAR-10's recipe
    "svhn": dict(epochs=100, lr=0.1, batch_size=128, augment=False),  # train split, no augmentation
    "folder": dict(epochs=200, lr=0.1, batch_size=128, augment=True),
    # Demo-sized: 4 epochs (lr 0.1, 0.1, 0.02, 0.004), batch 128: WRN-16-1 at 99.35 % in 35 s.
    # No augmentation: zskt_shapes already randomises position, rotation, size and colour, and
    # the test split is drawn the same way.
    "shapes": dict(epochs=4, lr=0.1, batch_size=128, augment=False),
}
# The flags that define a run: --resume takes them from the checkpoint and refuses others.
RECIPE = ("dataset", "arch", "epochs", "lr", "batch_size", "seed", "amp", "mean", "std",
          "distill_from", "finetune_from", "samples_per_class", "few_shot_schedule", "max_steps",
          "data_dir", "image_size", "teacher_copy")


# ----------------------------------------------------------------------------------------------
# Data: the whole split lives on the training device as uint8; batches are augmented there.

def crop_flip(images, top, left, flip, padding=4):
    """Crop each padded image at (top, left) and mirror it where `flip`: one gather for the batch.
    Padding uint8 zeros = the black pixels torchvision adds to PIL images before Normalize."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = top[:, None] + torch.arange(h, device=images.device)            # (n, h)
    cols = left[:, None] + torch.arange(w, device=images.device)           # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)                  # read columns backwards
    index = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]
    index = index.view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def augment(images, generator, padding=4):
    """RandomCrop(32, padding=4) + RandomHorizontalFlip, as the author's CIFAR-10 loader
    (utils/datasets.py)."""
    n, dev = len(images), images.device
    top, left = torch.randint(0, 2 * padding + 1, (2, n), device=dev, generator=generator)
    flip = torch.randint(0, 2, (n,), device=dev, generator=generator).bool()
    return crop_flip(images, top, left, flip, padding)


def per_class_subset(labels, m, seed):
    """Indices of exactly m random training images of every class (M in Figure 2), a new draw
    per seed."""
    if m == -1:
        return torch.arange(len(labels))
    smallest = int(torch.bincount(labels)[labels.unique()].min())
    if not 1 <= m <= smallest:
        raise UserError(f"--samples-per-class must be -1 (all) or 1..{smallest} (the size of the "
                        f"smallest class), not {m}")
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return torch.cat([perm[labels[perm] == c][:m] for c in labels.unique()]).sort().values


def channel_stats(images):
    """Per-channel mean and std of uint8 images in [0, 1]: the normalisation of a folder."""
    x = images.transpose(0, 1).flatten(1).float() / 255
    return x.mean(1).tolist(), x.std(1).tolist()


def mix(*ints):
    """A 63-bit seed from (seed, epoch[, step]): batches depend on nothing else, so resuming is
    exact."""
    return int(np.random.SeedSequence(list(ints)).generate_state(2, np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------------------------
# Schedule and loss.

def schedule(base_epochs, n_train, n_classes, m, scale_n_iters=1.0):
    """(epochs, milestones) as the author's main.py: with M images per class, both are scaled by
    scale_n_iters * N_train / (C*M). With scale_n_iters = 1 every M gets the same number of
    iterations, as the paper says. Milestones are 30/60/80 % of the scaled epochs, rounded down
    after scaling: the author's numbers for 200 and 100 base epochs, and no milestone at epoch 0
    for the few base epochs of shapes."""
    scale = 1.0 if m == -1 else scale_n_iters * n_train / (n_classes * m)
    return int(base_epochs * scale), [int(base_epochs * p * scale / 10) for p in (3, 6, 8)]


def scale_n_iters(dataset, m, rule="author"):
    """The author's SVHN scripts pass scale_n_iters = M/100 for M = 10..100, so small M train
    fewer iterations; beyond M = 100 (Table 2's KD+AT student at M = 200) no script exists, and
    M/100 would train twice a full-data run, so the scale stops at 1. CIFAR and the paper: 1."""
    return min(m / 100, 1.0) if dataset == "svhn" and m != -1 and rule == "author" else 1.0


def sgd(model, lr):
    """The author's optimizer (FewShot solver.py, the usual WRN recipe): momentum 0.9, not
    Nesterov, weight decay 5e-4."""
    return torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4)


def kd_at_loss(student_logits, teacher_logits, labels, student_acts, teacher_acts,
               alpha=0.9, temperature=4.0, beta=1000.0):
    """(1-a) CE + 2 a T^2 KL_mean + beta sum_l AT_l, the author's KD+AT (FewShot solver.py);
    KL_mean is F.kl_div's elementwise mean (over batch *and* classes), which the factor 2 a T^2
    was set against."""
    T = temperature
    ce = F.cross_entropy(student_logits.float(), labels)
    kd = zskt.kl_divergence(student_logits, teacher_logits, T)
    return (1 - alpha) * ce + 2 * alpha * T * T * kd + beta * zskt.attention_loss(student_acts,
                                                                                 teacher_acts)


# ----------------------------------------------------------------------------------------------
# Training and evaluation.

def steps_per_epoch(n, batch_size, max_steps=None):
    """Batches of min(batch_size, n) images; a last batch of one image is dropped (BatchNorm
    needs two)."""
    bs = min(batch_size, n)
    return min(n // bs + (n % bs >= 2), max_steps or n)


def train_epoch(model, teacher, optimizer, data, args, epoch, first_step=0, stop=None,
                progress=None):
    """One epoch of `data` (images, labels on the device) from `first_step`; returns early after
    the step on which a signal arrived. Cross-entropy without a teacher (scratch = KD+AT with
    alpha = 0, beta = 0), KD+AT with one."""
    images, labels = data
    dev, n = images.device, len(images)
    bs, steps = min(args.batch_size, n), steps_per_epoch(n, args.batch_size, args.max_steps)
    seeded = torch.Generator(dev).manual_seed(mix(args.seed, epoch))
    order = torch.randperm(n, generator=seeded, device=dev)
    g, log = torch.Generator(dev), dict(steps=steps, done=first_step, loss=0.0, seen=0)
    correct = torch.zeros((), dtype=torch.long, device=dev)
    mean, std = (torch.tensor(v, device=dev) for v in (args.mean, args.std))  # once, not per step
    model.train()
    for step in range(first_step, steps):
        idx = order[step * bs:(step + 1) * bs]
        x, y = images[idx], labels[idx]
        if PRESETS[args.dataset]["augment"]:
            x = augment(x, g.manual_seed(mix(args.seed, epoch, step)))
        # The memory layout is set on uint8 images: 4x less to copy than on floats.
        x = zskt.normalize(x.contiguous(memory_format=torch.channels_last), mean, std)
        with zskt.autocast(dev, args.amp):
            logits, acts = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits, t_acts = teacher(x)
        if teacher is None:
            loss = F.cross_entropy(logits.float(), y)
        else:
            loss = kd_at_loss(logits, t_logits, y, acts, t_acts, beta=args.kd_at_beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()  # one wait per step, so that a non-finite loss stops the run at once
        if not math.isfinite(value):
            raise UserError(f"step {step + 1} of epoch {epoch + 1}: loss = {value} is not finite; "
                            f"the last good checkpoint in {args.out} is intact (a new --out with "
                            f"a lower --lr, or without --amp, may avoid it)")
        correct += (logits.argmax(1) == y).sum()
        log.update(done=step + 1, loss=log["loss"] + value * len(y), seen=log["seen"] + len(y))
        if progress is not None:
            progress.update()
        if stop is not None and stop.signal:
            break
    log["correct"] = int(correct)
    return log


def save_state(model, optimizer, scheduler, epoch, step, args, seconds=0.0):
    """Everything --resume needs, written atomically: a kill never leaves half a file."""
    save_atomic({"model": zskt_models.unwrap(model).state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "epoch": epoch, "step": step, "rng": rng_state(), "seconds": seconds,
                 "args": {k: getattr(args, k) for k in RECIPE}}, Path(args.out) / "checkpoint.pt")


def given_flags(args):
    """The RECIPE flags given on the command line, paths resolved."""
    given = {k: getattr(args, k) for k in RECIPE if getattr(args, k, None) is not None}
    for k in ("data_dir", "distill_from", "finetune_from"):
        if k in given:
            given[k] = str(Path(given[k]).resolve())
    return given


def resolve(args):
    """Fill unset flags from the run being resumed (refusing contradictions) or from PRESETS and
    validate them. Paths are stored resolved, so a run resumes from any working directory.
    Returns the resume checkpoint, or None."""
    given = given_flags(args)
    # --dataset, else the one the KD+AT teacher's file names (the literature's <dataset>_<arch>.pth)
    dataset = given.get("dataset") or zskt_run.dataset_of(given.get("distill_from")) or "shapes"
    with user_input():
        zskt.make_config(dataset)  # refuses unknown datasets
    if args.start_or_resume:  # a scheduler may run one command twice: it continues the first run
        args.resume = args.out is not None and (Path(args.out) / "checkpoint.pt").is_file()
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; pass one of them")
    if not args.resume:
        zskt_run.check_folder_flags(dataset, given.get("data_dir"), given.get("image_size"))
    m, teacher, init = (given.get("samples_per_class", -1), given.get("distill_from"),
                        given.get("finetune_from"))
    if teacher and init:
        raise UserError("--distill-from and --finetune-from exclude each other; pass one of them")
    if init and not Path(init).is_file():
        raise UserError(f"--finetune-from: no checkpoint file at {init}")
    # By default the teacher zskt.py expects, or the architecture of the network fine-tuned.
    arch = given.get("arch") or (zskt_models.infer_arch(zskt_models.load_model(init)[0]
                                                        .state_dict())[0] if init
                                 else zskt.make_config(dataset).teacher)
    arch = zskt_models.canonical(arch)
    data_dir = given.get("data_dir", str(Path("./data").resolve()))
    teacher_path = zskt_run.default_teacher_path(dataset, arch, data_dir)
    if args.out is None:
        args.out = (f"runs/{teacher_path.stem}{f'-kdat-{Path(teacher).stem}' if teacher else ''}"
                    f"{f'-finetune-{Path(init).parent.name}' if init else ''}"
                    f"{f'-m{m}' if m != -1 else ''}-seed{given.get('seed', 0)}")
        if teacher is None and init is None and m == -1:  # a teacher: save it where zskt.py looks
            given["teacher_copy"] = str(teacher_path.resolve())
    args.out = str(Path(args.out).resolve())
    resumed = resumed_run(args, given) if args.resume else None
    if resumed:
        given = resumed["args"]
    fill_defaults(args, given, dataset, arch, data_dir, init)
    return resumed


def resumed_run(args, given):
    """The checkpoint of the run in --out; flags that contradict it are refused."""
    path = Path(args.out) / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"--resume: there is no checkpoint.pt in {args.out} to resume from")
    resumed = load_checkpoint(path)
    if not isinstance(resumed, dict) or "args" not in resumed:
        raise UserError(f"{path} is not a train_teacher.py run checkpoint")
    for k, v in given.items():
        if v != resumed["args"].get(k):
            flag = "--" + k.replace("_", "-")
            raise UserError(f"--resume: {args.out} was started with {flag} "
                            f"{resumed['args'].get(k)}, not {v}; drop {flag} or start a new run "
                            f"with another --out")
    return resumed


def fill_defaults(args, given, dataset, arch, data_dir, init):
    """Every RECIPE flag from `given`, else its default; then the checks of their values."""
    defaults = dict(PRESETS[given.get("dataset", dataset)], dataset=dataset, arch=arch, seed=0,
                    amp=False, samples_per_class=-1, mean=None, std=None, distill_from=None,
                    finetune_from=None, max_steps=None, data_dir=data_dir, teacher_copy=None,
                    few_shot_schedule="author", image_size=32)
    if init:  # fine-tuning: refine what the network knows, with a tenth of the lr and the epochs
        defaults.update(lr=0.01, epochs=max(1, PRESETS[dataset]["epochs"] // 10))
    for k in RECIPE:
        setattr(args, k, given.get(k, defaults.get(k)))
    with user_input():
        zskt_models.build(args.arch)  # unknown architectures fail here, before any data is loaded
    checks = [(args.epochs <= 0, "--epochs must be positive"),
              (args.batch_size < 2, "--batch-size must be at least 2 (BatchNorm needs two "
                                    "examples)"),
              (not 0 < args.lr < float("inf"), "--lr must be a positive number"),
              (args.samples_per_class == 0 or args.samples_per_class < -1,
               "--samples-per-class must be -1 (all images) or positive"),
              (args.max_steps is not None and args.max_steps <= 0, "--max-steps must be positive"),
              (args.checkpoint_every is not None and args.checkpoint_every <= 0,
               "--checkpoint-every must be positive"),
              (args.std is not None and min(args.std) <= 0, "--std must be positive")]
    for bad, message in checks:
        if bad:
            raise UserError(message)
    check_seed(args.seed)
    if args.distill_from and not Path(args.distill_from).is_file():
        raise UserError(f"--distill-from: no checkpoint file at {args.distill_from}")
    copy_exists = args.teacher_copy and Path(args.teacher_copy).exists()
    if copy_exists and not (args.overwrite or args.resume):
        raise UserError(f"{args.teacher_copy} already exists; pass --overwrite to replace it, or "
                        f"--out")


def finished(args):
    """A finished run is reported, not redone: True if --out holds one."""
    out = Path(args.out)
    if not (args.resume and (out / "model.pt").is_file() and (out / "summary.json").is_file()):
        return False
    summary = json.loads((out / "summary.json").read_text())
    print(f"{out} finished earlier: {summary['arch']}, test accuracy {summary['test_acc']:.2%}, "
          f"{plural(summary['epochs'], 'epoch')}; model.pt is its model")
    return True


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(resolve_device(args.device))
    full_fp32()
    resumed = resolve(args)
    if finished(args):
        return
    with user_input():
        train_x, train_y, classes = zskt.load_dataset(args.dataset, "train", args.data_dir,
                                                      args.image_size)
        test_x, test_y, _ = zskt.load_dataset(args.dataset, "test", args.data_dir,
                                              args.image_size)
    teacher, start = networks_given(args, classes)
    set_normalisation(args, start.get("meta", {}), train_x)
    subset = per_class_subset(train_y, args.samples_per_class, args.seed)
    rule = scale_n_iters(args.dataset, args.samples_per_class, args.few_shot_schedule)
    epochs, milestones = schedule(args.epochs, len(train_y), len(classes),
                                  args.samples_per_class, rule)
    # Evaluate and save at most 200 times, at least 100 steps apart: few-shot epochs are tiny.
    per_epoch = steps_per_epoch(len(subset), args.batch_size, args.max_steps)
    every = max(1, epochs // 200, math.ceil(100 / per_epoch))
    args.checkpoint_every = args.checkpoint_every or every
    test = zskt.TestSet(test_x, test_y, classes, tuple(args.mean), tuple(args.std))
    with run_lock(args.out):
        if not args.resume:
            prepare_run_dir(args.out, overwrite=args.overwrite)
        with tee(Path(args.out) / "log.txt"):  # the console, also in the run directory
            fit(args, device, teacher, resumed, (train_x[subset], train_y[subset]), test,
                (epochs, milestones, every), start.get("init"))


def networks_given(args, classes):
    """The KD+AT teacher (or None), and what a fine-tuning run starts from ({} otherwise): the
    network and the file's metadata."""
    teacher, meta = (None, {})
    if args.distill_from:
        teacher, meta = zskt_models.load_model(args.distill_from)
        dataset = meta.get("dataset") or args.dataset
        n = zskt_models.infer_arch(teacher.state_dict())[1]
        if (dataset, n) != (args.dataset, len(classes)):
            raise UserError(f"{args.distill_from} holds a teacher for {dataset} with "
                            f"{plural(n, 'class', 'classes')}, not for "
                            f"{args.dataset} with {len(classes)} classes")
        check_classes(args.distill_from, meta, classes)
        return teacher, {"meta": meta}
    if args.finetune_from:
        init, meta = zskt_models.load_model(args.finetune_from, args.arch, len(classes))
        check_classes(args.finetune_from, meta, classes)
        return None, {"meta": meta, "init": init}
    return None, {}


def check_classes(path, meta, classes):
    """Refuses a network file that names other classes than the data's: two image folders can
    have the same number of classes. Files that name none (the author's, the literature's) pass."""
    stored = meta.get("classes")
    if stored is not None and list(stored) != list(classes):
        raise UserError(f"{path} was trained on the classes {listed(stored)}, but the data has "
                        f"{listed(classes)}; pass the data it was trained on, or another file")


def set_normalisation(args, meta, train_x):
    """The student must see the inputs its teacher (or the network it starts from) was trained
    on: that file's constants come first, then --mean/--std, the dataset's, the train split's."""
    stats = ((meta["mean"], meta["std"]) if "mean" in meta
             else zskt.MEAN_STD.get(args.dataset) or channel_stats(train_x))
    for k, v in zip(("mean", "std"), stats):
        if "mean" in meta and getattr(args, k) not in (None, list(v)):
            raise UserError(f"--{k} {getattr(args, k)} differs from the teacher's {list(v)}; "
                            f"drop --{k}")
        setattr(args, k, [float(c) for c in getattr(args, k) or v])


def prepared(args, device, teacher, resumed, test, milestones, init):
    """(model, optimizer, scheduler, teacher, epoch, step): seeded, on the device, restored from
    `resumed`, with attention maps paired where teacher and student differ."""
    seed_everything(args.seed)
    # channels_last: faster convolutions on GPUs, and measured ~20% faster on this CPU too
    model = zskt_models.build(args.arch, len(test.classes))
    model = model.to(device, memory_format=torch.channels_last)
    if init is not None:
        model.load_state_dict(init.state_dict())
    optimizer = sgd(model, args.lr)
    # The author calls scheduler.step(epoch) after each epoch, so each decay takes effect one
    # epoch after its milestone; milestones + 1 with a plain step() reproduces that.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m + 1 for m in milestones], 0.2)
    torch.backends.cudnn.benchmark = True
    args.kd_at_beta = 1000.0
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        size = test.images.shape[-1]
        with user_input():
            teacher, model, note = zskt_models.pair_for_attention(teacher, model, size, 1000.0)
        pairs = len(zskt_models.map_sizes(teacher, size))
        args.kd_at_beta = 1000.0 * 3 / pairs  # the author's FewShot code: 3 / (number of layers)
        if note or pairs != 3:
            print(f"{note or 'attention transfer pairs every map'}; beta = 1000 x 3 / {pairs}")
    epoch, step = 0, 0
    if resumed:
        zskt_models.unwrap(model).load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        set_rng_state(resumed["rng"])
        epoch, step = resumed["epoch"], resumed["step"]
        print(f"resuming {args.out} at epoch {epoch + 1}, step {step + 1}")
    else:
        save_state(model, optimizer, scheduler, 0, 0, args)  # a failure always leaves a checkpoint
    return model, optimizer, scheduler, teacher, epoch, step


def fit(args, device, teacher, resumed, data, test, plan, init=None):
    """Trains args.arch for the plan's epochs (epochs, milestones, evaluate every) from scratch,
    from `init` (fine-tuning) or from `resumed`; writes model.pt and summary.json (and the
    teacher copy)."""
    epochs, milestones, every = plan
    model, optimizer, scheduler, teacher, epoch, step = prepared(
        args, device, teacher, resumed, test, milestones, init)
    data = tuple(t.to(device, non_blocking=True) for t in data)
    test = test._replace(images=test.images.to(device))
    what = f"KD+AT from {args.distill_from}" if teacher is not None else "cross-entropy"
    drops = sorted({m + 1 for m in milestones if m + 1 < epochs})  # after which lr is x0.2
    per_epoch = steps_per_epoch(len(data[0]), args.batch_size, args.max_steps)
    print(f"{args.arch} on {args.dataset} ({len(data[0])} train / {len(test.images)} test "
          f"images), {what}, {plural(epochs, 'epoch')} ({plural(epochs * per_epoch, 'step')}), "
          f"batch {min(args.batch_size, len(data[0]))}"
          f", lr {args.lr}" + (f" (x0.2 after epoch{'s' * (len(drops) > 1)} "
                               f"{', '.join(map(str, drops))})" if drops else "") +
          f", {device}; run dir {args.out}")
    start = time.time() - (resumed or {}).get("seconds", 0.0)  # wall time across resumes
    bar = Progress(epochs * per_epoch, "training", initial=epoch * per_epoch + step, unit="step")
    test_acc, sums = None, fresh_sums()
    with StopOnSignal() as stop:
        while epoch < epochs:
            t, lr = time.time(), optimizer.param_groups[0]["lr"]
            log = train_epoch(model, teacher, optimizer, data, args, epoch, step, stop, bar)
            log["train_s"] = time.time() - t
            sums = {k: sums[k] + log[k] for k in sums}
            step = log["done"]
            if step == log["steps"]:
                epoch, step = epoch + 1, 0
                scheduler.step()
            if stop.signal:
                save_state(model, optimizer, scheduler, epoch, step, args, time.time() - start)
                bar.close()
                again = shell_command("train_teacher.py", "--resume", "--out", args.out)
                raise Stopped(f"{stop.signal}: saved {args.out}/checkpoint.pt (next: epoch "
                              f"{epoch + 1}, step {step + 1}); continue with: {again}",
                              stop.signum)
            if epoch % every == 0 or epoch == epochs:
                test_acc = zskt.accuracy(model, test)
                bar.note(epoch_note(epoch, epochs, sums, test_acc, lr))
                sums = fresh_sums()
            if epoch % args.checkpoint_every == 0 or epoch == epochs:
                save_state(model, optimizer, scheduler, epoch, 0, args, time.time() - start)
                stop.saved = f"the last checkpoint, {args.out}/checkpoint.pt (epoch {epoch}), stays"
    bar.close()
    if test_acc is None:  # resumed at the very end
        test_acc = zskt.accuracy(model, test)
    save_model(args, zskt_models.unwrap(model), test, test_acc, epochs, time.time() - start,
               device)


def fresh_sums():
    return dict(loss=0.0, correct=0, seen=0, train_s=0.0)


def epoch_note(epoch, epochs, sums, test_acc, lr):
    seen = max(sums["seen"], 1)
    return (f"epoch {epoch}/{epochs}: loss {sums['loss'] / seen:.4f}, train "
            f"{sums['correct'] / seen:.2%}, test {test_acc:.2%}, lr {lr:.4g}, "
            f"{sums['seen'] / sums['train_s']:.0f} img/s")


def save_model(args, model, test, test_acc, epochs, seconds, device):
    """model.pt (and the teacher copy) in the author's format plus metadata (the class names
    among them, so that a file is not used on other classes), and summary.json."""
    extra = ({"teacher": str(args.distill_from)} if args.distill_from
             else {"finetuned_from": args.finetune_from} if args.finetune_from else {})
    model = model.to("cpu", memory_format=torch.contiguous_format)
    final = zskt_models.model_checkpoint(model, args.arch, args.dataset, args.mean, args.std,
                                         test.images.shape[-1], epoch=epochs, test_acc=test_acc,
                                         seed=args.seed, samples_per_class=args.samples_per_class,
                                         classes=[str(c) for c in test.classes], **extra)
    for path in filter(None, [Path(args.out) / "model.pt",
                              args.teacher_copy and Path(args.teacher_copy)]):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(final, path)
        except OSError as e:
            raise UserError(f"cannot write {path} ({e.strerror})") from None
        print(f"saved {path}: {args.arch}, test accuracy {test_acc:.2%}, {seconds / 60:.1f} min")
    write_json(Path(args.out) / "summary.json", {
        "arch": args.arch, "dataset": args.dataset, "samples_per_class": args.samples_per_class,
        "seed": args.seed, "test_acc": test_acc, "epochs": epochs, "seconds": seconds,
        "device": str(device), "device_name": device_name(device), **extra,
        "recipe": {k: getattr(args, k) for k in RECIPE}})


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="train_teacher.py", description="Train a teacher, a scratch "
                                "student or a KD+AT baseline (the paper's Section 4.1, with the "
                                "author's FewShotKnowledgeTransfer recipe).")
    p.add_argument("--dataset", help="shapes (default, offline), cifar10, cifar100, svhn (needs "
                   "scipy), or folder: --data-dir DIR with DIR/{train,test}/<class>/*")
    p.add_argument("--arch", help=f"{zskt_models.NAMES}; resnet and vgg train with the paper's "
                   f"recipe too; default: the teacher zskt.py expects for the dataset")
    p.add_argument("--epochs", type=int, help="base epochs (cifar 200, svhn 100), scaled up for "
                   "--samples-per-class")
    p.add_argument("--lr", type=float, help="initial learning rate (0.1)")
    p.add_argument("--batch-size", type=int, help="128")
    p.add_argument("--seed", type=int, help="seeds the initialisation, the M-image subset and the "
                   "batches (0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true", default=None, help="bf16 autocast (losses stay "
                   "in fp32)")
    p.add_argument("--mean", type=float, nargs=3, help="default: the teacher's, the dataset's, or "
                   "the train split's")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std (same defaults as --mean)")
    p.add_argument("--data-dir", help="where the datasets are, or are downloaded to (./data)")
    p.add_argument("--image-size", type=int, help="--dataset folder: resize the images to this "
                   "size (default 32; the aspect ratio is not kept)")
    p.add_argument("--out", help="run directory (default runs/<dataset>-<arch>[-kdat-<teacher>]"
                   "[-m<M>]-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (a finished "
                   "run is only reported)")
    p.add_argument("--start-or-resume", action="store_true", help="resume the run in --out if it "
                   "has a checkpoint, else start it (for schedulers that may run a command twice)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory / "
                   "teacher file")
    p.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (default: "
                   "every evaluation)")
    p.add_argument("--distill-from", metavar="TEACHER_CKPT", help="train with KD+AT from this "
                   "teacher's file")
    p.add_argument("--finetune-from", metavar="NETWORK_CKPT", help="start from this network (e.g. "
                   "a zero-shot student.pt) and fine-tune it with cross-entropy on the "
                   "--samples-per-class images, as 'Ours' with M > 0 in Figure 2; by default with "
                   "lr 0.01 and a tenth of the epochs")
    p.add_argument("--samples-per-class", type=int, help="M images per class, drawn per seed; -1 = "
                   "all (default)")
    p.add_argument("--few-shot-schedule", choices=("author", "paper"), help="iterations for M "
                   "images per class: author (default) as the author's scripts, which on SVHN "
                   "scale them by M/100 up to M = 100; paper: the same number for every M "
                   "(Section 4.1)")
    p.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)  # tests: cap steps per epoch
    return p.parse_args(argv)


if __name__ == "__main__":
    run_cli(main)
