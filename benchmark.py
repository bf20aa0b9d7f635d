"""Benchmarks: our loop against a plain re-implementation of the author's code structure, FLOPs
counted by torch's FLOP counter, and the fraction of the machine's peak they reach.

The reference functions here (the author's loop with the author's loss functions, Algorithm 2 one
image at a time) are also the ground truth of the equivalence tests in test_zskt.py.

    python benchmark.py peak                        # this machine's peak FLOP/s: how it is derived, and a big matmul
    python benchmark.py zskt                        # s per outer iteration, author's loop vs ours, with FLOP/s
    python benchmark.py zskt --amp --compile        # ... plus bf16 autocast and torch.compile: one table
    python benchmark.py phases                      # where one outer iteration's time goes
    python benchmark.py curves                      # transition curves: batched vs one image at a time
    python benchmark.py data                        # the teacher-training data path vs torchvision's loader
    python benchmark.py gpu                         # all of the above on CUDA, one markdown table (< 10 min)

Ratios are meaningful within one run only: these machines are noisy, so every table measures its
variants one after another in one process.
"""
import argparse
import json
import re
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import zskt
import zskt_utils


# ----------------------------------------------------------------------------------------------
# The author's code structure, written out independently of zskt.py's functions.

def author_divergence(student_logits, teacher_logits, T):
    """The author's solver.py divergence: F.kl_div with its element-wise 'mean' (the default in PyTorch 1.0)."""
    with warnings.catch_warnings():  # PyTorch warns that 'mean' also divides by the classes: that is the point
        warnings.simplefilter("ignore")
        return F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1), reduction="mean")


def author_attention_diff(s, t):
    """The author's attention_diff (from szagoruyko's attention-transfer utils.py)."""
    at = lambda x: F.normalize(x.pow(2).mean(1).view(x.size(0), -1))
    return (at(s) - at(t)).pow(2).mean()


def author_zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """Algorithm 1 structured as in the author's solver.py, with its own loss functions (not
    zskt.py's): plain backward() in the generator step (teacher and student weight gradients are
    computed too), and the generator re-run with autograd in every student step, the student loss
    back-propagated through it."""
    z = torch.randn(cfg.batch_size, cfg.z_dim, device=next(student.parameters()).device)
    for _ in range(cfg.n_g):
        x = generator(z)
        loss_g = -author_divergence(student(x)[0], teacher(x)[0], cfg.temperature)
        opt_generator.zero_grad()
        loss_g.backward()
        nn.utils.clip_grad_norm_(generator.parameters(), cfg.grad_clip)
        opt_generator.step()
    for i in range(cfg.n_s):
        x = generator(z)
        if i == 0:
            with torch.no_grad():
                t_logits, t_acts = teacher(x)
        s_logits, s_acts = student(x)
        loss_s = author_divergence(s_logits, t_logits, cfg.temperature) + sum(
            cfg.beta * author_attention_diff(s_a, t_a) for s_a, t_a in zip(s_acts, t_acts))
        opt_student.zero_grad()
        loss_s.backward()
        nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt_student.step()
    return {"loss_generator": loss_g.item(), "loss_student": loss_s.item()}


def author_transition_curves(stepped, observed, x, steps=100, step_size=1.0, labels=None):
    """Algorithm 2 as the author's code runs it: one image and one target class at a time."""
    stepped.eval(), observed.eval()
    C = stepped.fc.out_features
    p_s, p_o = torch.zeros(len(x), C - 1, steps), torch.zeros(len(x), C - 1, steps)
    for n in range(len(x)):
        x0 = x[n:n + 1]
        ref = stepped(x0)[0].argmax().item() if labels is None else int(labels[n])
        for c in range(C - 1):
            j = (ref + c + 1) % C
            xk = x0.clone().requires_grad_(True)
            for k in range(steps):
                logits = stepped(xk)[0]
                p_s[n, c, k] = logits.softmax(1)[0, j].item()
                p_o[n, c, k] = observed(xk)[0].softmax(1)[0, j].item()
                loss = nn.functional.cross_entropy(logits, torch.tensor([j], device=xk.device))
                grad, = torch.autograd.grad(loss, xk)
                xk = (xk - step_size * grad).detach().requires_grad_(True)
    return p_s, p_o


# ----------------------------------------------------------------------------------------------
# Peak FLOP/s: cores x vector lanes x FMA units x 2 FLOP x clock on a CPU, datasheets on a GPU.

# Dense TFLOP/s from NVIDIA's datasheets (no sparsity): (fp32 on CUDA cores, tf32 tensor, bf16 tensor).
GPU_PEAK = {"H200": (67, 495, 989), "H100 PCIe": (51, 378, 756), "H100": (67, 495, 989),
            "A100": (19.5, 156, 312), "L4": (30.3, 60, 121), "RTX 4090": (82.6, 82.6, 165.2)}


def cpu_flags():
    text = zskt_utils.cpu_info()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M)[1].split()) if "flags" in text else set()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    return flags, (max(mhz) * 1e6 if mhz else None)


def peak(device, amp=False):
    """(FLOP/s, how it was derived) of `device` in fp32, or bf16 with `amp`; (None, why) when unknown."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, (fp32, tf32, bf16) in GPU_PEAK.items():
            if key in name:
                return (bf16 if amp else fp32) * 1e12, f"{name}: {'bf16 tensor' if amp else 'fp32'} datasheet peak " \
                    f"({bf16 if amp else fp32} TFLOP/s dense; fp32 convolutions may run on tf32 tensor cores, {tf32})"
        return None, f"{name}: no datasheet figure here"
    flags, clock = cpu_flags()
    cores = torch.get_num_threads()
    if clock is None:
        return None, "no clock in /proc/cpuinfo"
    if amp and "amx_bf16" in flags:
        per_cycle, how = 1024, "AMX: 1024 bf16 FLOP/cycle/core"
    else:
        lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
        lanes *= 2 if amp and "avx512_bf16" in flags else 1
        per_cycle, how = lanes * 2 * 2, f"{lanes} {'bf16' if lanes == 32 else 'fp32'} lanes x 2 FMA units x 2 FLOP"
    return cores * per_cycle * clock, f"{cores} cores x {how} x {clock / 1e9:.2f} GHz (base clock from /proc/cpuinfo)"


def matmul_rate(device, dtype=torch.float32, n=2048, reps=10):
    """FLOP/s of a large square matmul: what the hardware delivers on the friendliest workload."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    return reps * 2 * n ** 3 / timed(lambda: [a @ b for _ in range(reps)], device)


# ----------------------------------------------------------------------------------------------
# Measurements.

def timed(fn, device):
    """Wall seconds of fn(), waiting for queued GPU work on both ends."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def flops(fn):
    """FLOPs of fn() as torch's FLOP counter sees them (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def setup(pair, cfg, device, ours=True, compile=False, image_size=32):  
    """Seeded teacher, student, generator and their optimizers, laid out as ours or as the author's."""
    torch.manual_seed(0)
    teacher, student = zskt.wrn(pair[0]).eval(), zskt.wrn(pair[1])
    generator = zskt.Generator(cfg.z_dim, image_size)
    nets = [m.to(device, memory_format=torch.channels_last if ours else torch.contiguous_format)
            for m in (teacher, student, generator)]
    nets[0].requires_grad_(not ours)  # the author keeps the teacher's gradients on
    opts = torch.optim.Adam(student.parameters(), cfg.lr_student), torch.optim.Adam(generator.parameters(), cfg.lr_generator)
    if compile:
        nets = [torch.compile(m) for m in nets]
    return nets, opts


def variants(args):
    v = [("author's loop, fp32", dict(ours=False, amp=False, compile=False)), ("ours, fp32", dict(amp=False, compile=False))]
    v += [("ours, bf16 autocast", dict(amp=True, compile=False))] if args.amp else []
    v += [("ours, compiled, fp32", dict(amp=False, compile=True))] if args.compile else []
    v += [("ours, compiled, bf16", dict(amp=True, compile=True))] if args.amp and args.compile else []
    return v


def bench_zskt(args, device, out=print):
    """One table: s per outer iteration, FLOPs, FLOP/s and % of peak of every variant, measured in one process."""
    rows = []
    for pair in args.pairs:
        base = None
        for name, v in variants(args):
            cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s, amp=v["amp"])
            ours = v.get("ours", True)
            step = zskt.zero_shot_iteration if ours else author_zero_shot_iteration
            nets, opts = setup(pair, cfg, device, ours, v["compile"], args.image_size)
            t0 = time.perf_counter()
            for _ in range(2 if v["compile"] else 1):  # warm-up (compilation happens here)
                step(*nets, *opts, cfg)
            warm = time.perf_counter() - t0
            eager = setup(pair, cfg, device, ours, image_size=args.image_size)  # compiled code hides its FLOPs: count eager twins
            count = flops(lambda: step(*eager[0], *eager[1], cfg))
            s = timed(lambda: [step(*nets, *opts, cfg) for _ in range(args.repeats)], device) / args.repeats
            base = base or s
            top, _ = peak(device, v["amp"])
            rows.append((f"{pair[0]} -> {pair[1]}", name, s, count, count / s, top and count / s / top, base / s, warm))
            out(f"  {rows[-1][0]}, {name}: {s:.3f} s/iteration" + (f" (warm-up with compilation {warm:.0f} s)" if v["compile"] else ""))
    return rows


def table(rows, device, args):
    lines = [f"Outer iterations of Algorithm 1, batch {args.batch_size}, n_s {args.n_s}, {args.image_size}x{args.image_size}, "
             f"{zskt.device_name(device)}, "
             f"torch {torch.__version__}; {args.repeats} timed iterations each after warm-up, one process.", "",
             "| pair | variant | s / iteration | vs author | GFLOP / iteration | GFLOP/s | % of peak |",
             "|---|---|---|---|---|---|---|"]
    for pair, name, s, count, rate, frac, speedup, _ in rows:
        lines.append(f"| {pair} | {name} | {s:.3f} | {speedup:.2f}x | {count / 1e9:.1f} | {rate / 1e9:.1f} | "
                     f"{'n/a' if frac is None else f'{frac:.0%}'} |")
    for amp in (False, True):
        top, how = peak(device, amp)
        lines.append(f"\nPeak {'bf16' if amp else 'fp32'}: {'unknown' if top is None else f'{top / 1e9:.0f} GFLOP/s'} ({how}).")
    return "\n".join(lines)


def bench_phases(args, device, out=print):
    """Time and FLOP/s of the three phases of one outer iteration (ours, fp32 or --amp)."""
    cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s, amp=args.amp)
    lines = ["| pair | phase | ms | GFLOP | GFLOP/s | % of peak |", "|---|---|---|---|---|---|"]
    top = peak(device, args.amp)[0]
    for pair in args.pairs:
        (teacher, student, generator), (opt_s, opt_g) = setup(pair, cfg, device, image_size=args.image_size)
        z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
        state = {}

        def teacher_forward():
            with torch.no_grad(), zskt.autocast(device, cfg.amp):
                state["x"] = generator(z)
                state["t"] = teacher(state["x"])

        phases = [("generator step (G, T and S forward, backward to G)",
                   lambda: zskt.generator_step(teacher, student, generator, z, opt_g, cfg)),
                  ("pseudo batch and teacher forward", teacher_forward),
                  (f"{cfg.n_s} student steps", lambda: [zskt.student_step(student, state["x"], *state["t"], opt_s, cfg)
                                                       for _ in range(cfg.n_s)])]
        for name, fn in phases:
            fn()  # warm-up
            s = timed(lambda: [fn() for _ in range(args.repeats)], device) / args.repeats
            count = flops(fn)
            lines.append(f"| {pair[0]} -> {pair[1]} | {name} | {s * 1e3:.0f} | {count / 1e9:.2f} | {count / s / 1e9:.1f} | "
                         f"{'n/a' if top is None else f'{count / s / top:.0%}'} |")
            out(lines[-1])
    return "\n".join(lines)


def bench_curves(args, device, out=print):
    """Transition curves: batched (ours) vs one image at a time (the author's), same images and steps."""
    torch.manual_seed(0)
    stepped, observed = zskt.wrn(args.pairs[0][1]).to(device).eval(), zskt.wrn(args.pairs[0][0]).to(device).eval()
    x = torch.randn(args.images, 3, 32, 32, device=device)
    ours = timed(lambda: zskt.transition_curves(stepped, observed, x, args.steps), device)
    author = timed(lambda: author_transition_curves(stepped, observed, x, args.steps), device)
    line = (f"transition curves, {args.images} images x 9 targets x {args.steps} steps, {args.pairs[0][1]} stepped, "
            f"{args.pairs[0][0]} observed, {zskt.device_name(device)}: batched {ours:.2f} s, one image at a time "
            f"{author:.2f} s, {author / ours:.1f}x faster")
    out(line)
    return line


def bench_data(args, device, out=print, n=4096):
    """images/s of train_teacher.py's data path (uint8 on the device, batched crop + flip), of the
    data path plus a training step, and of torchvision's DataLoader with the usual transforms."""
    import torchvision.transforms as T
    from PIL import Image
    import train_teacher as tt
    arch, bs, dev = args.pairs[0][1], args.batch_size, torch.device(device)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (n,))
    mean, std = zskt.MEAN_STD["cifar10"]
    model = zskt.wrn(arch).to(dev, memory_format=torch.channels_last)
    opt = tt.sgd(model, 0.1)
    dx, dy, g = images.to(dev), labels.to(dev), torch.Generator(dev).manual_seed(0)

    def data_path():
        idx = torch.randint(0, n, (bs,), device=dev, generator=g)
        return zskt.normalize(tt.augment(dx[idx], g), mean, std).contiguous(memory_format=torch.channels_last), dy[idx]

    def step():
        x, y = data_path()
        with zskt.autocast(dev, args.amp):
            loss = F.cross_entropy(model(x)[0].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def rate(fn, reps):
        fn()  # warm-up
        return reps * bs / timed(lambda: [fn() for _ in range(reps)], device)

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    loader = torch.utils.data.DataLoader(list(zip(pil, labels.tolist())), bs, shuffle=True, num_workers=0,
                                         collate_fn=lambda b: (torch.stack([tf(im) for im, _ in b]),
                                                               torch.tensor([y for _, y in b])))
    batches = iter(loader)
    data, train = rate(data_path, 200), rate(step, 5 if dev.type == "cpu" else 50)
    tv = rate(lambda: [t.to(dev, non_blocking=True) for t in next(batches)], 20)
    line = (f"{arch}, batch {bs}, {zskt.device_name(device)}: data path {data:,.0f} images/s; data path + training "
            f"step {train:,.0f} images/s (the data path is {train / data:.1%} of a step); torchvision DataLoader + "
            f"transforms (0 workers) {tv:,.0f} images/s")
    out(line)
    return line


def bench_gpu(args, device, out=print):
    """Everything that matters on a GPU, in one call of under 10 minutes: a markdown file for the README."""
    if args.device == "auto" and not str(device).startswith("cuda"):
        raise zskt.UserError("benchmark.py gpu needs CUDA; pass --device cpu to try the script on the CPU")
    args.amp, args.compile = True, not args.tiny
    parts = [f"# zskt on {zskt.device_name(device)}", "", table(bench_zskt(args, device, out), device, args), "",
             "## Phases (fp32)", "", bench_phases(args, device, out), "", "## Transition curves", "",
             bench_curves(args, device, out), "", "## Teacher data path", "", bench_data(args, device, out)]
    import tempfile
    import train_teacher as tt
    with tempfile.TemporaryDirectory() as d:  # one short zero-shot run on shapes, end to end
        t0 = time.perf_counter()
        tt.main(["--out", f"{d}/teacher", "--device", str(device), *(["--epochs", "1", "--max-steps", "2"] if args.tiny else [])])
        t1 = time.perf_counter()
        zskt.main(["--teacher-checkpoint", f"{d}/teacher/model.pt", "--out", f"{d}/run", "--device", str(device),
                   *(["--iterations", "2", "--mte-images", "4", "--mte-steps", "2"] if args.tiny else [])])
        summary = json.loads(Path(f"{d}/run/summary.json").read_text())
    parts += ["", "## The shapes demo", "", f"train_teacher.py {t1 - t0:.0f} s; zskt.py {summary['iterations']} "
              f"iterations {summary['seconds']:.0f} s: student {summary['student_test_acc']:.2%}, MTE {summary['mte']:.3f}"]
    Path(args.out).write_text("\n".join(parts) + "\n")
    out(f"wrote {args.out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("peak", "zskt", "phases", "curves", "data", "gpu"))
    p.add_argument("--pairs", nargs="+", default=["wrn-40-2:wrn-16-1", "wrn-16-2:wrn-16-1"],
                   help="teacher:student pairs (default: wrn-40-2:wrn-16-1 wrn-16-2:wrn-16-1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-s", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32, help="32 (CIFAR-10, SVHN) or 16 (the shapes demo)")
    p.add_argument("--repeats", type=int, default=3, help="timed outer iterations per variant")
    p.add_argument("--amp", action="store_true", help="also measure bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmark-gpu.md", help="where `gpu` writes its markdown")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds instead of minutes
    args = p.parse_args(argv)
    args.pairs = [tuple(pair.split(":")) for pair in args.pairs]
    device = zskt.resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    if args.what == "peak":
        for amp in (False, True):
            top, how = peak(device, amp)
            rate = matmul_rate(device, torch.bfloat16 if amp else torch.float32)
            print(f"{'bf16' if amp else 'fp32'}: peak {'unknown' if top is None else f'{top / 1e9:,.0f} GFLOP/s'} ({how}); "
                  f"a 2048x2048 matmul reaches {rate / 1e9:,.0f} GFLOP/s" + (f" = {rate / top:.0%} of it" if top else ""))
    elif args.what == "zskt":
        print(table(bench_zskt(args, device), device, args))
    else:
        {"phases": bench_phases, "curves": bench_curves, "data": bench_data, "gpu": bench_gpu}[args.what](args, device)


if __name__ == "__main__":
    zskt.run_cli(main)
