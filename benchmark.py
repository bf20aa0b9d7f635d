"""Benchmarks: our loop against a plain re-implementation of the author's code structure, FLOPs
counted by torch's FLOP counter, and the fraction of the machine's peak they reach.

The author's loop with the author's loss functions, and Algorithm 2 one image at a time, come from
author_reference.py, which is also the ground truth of the equivalence tests.

    python benchmark.py peak                  # this machine's peak FLOP/s, and a big matmul
    python benchmark.py zskt                  # s per outer iteration, author's loop vs ours, FLOP/s
    python benchmark.py zskt --amp --compile  # ... plus bf16 autocast and torch.compile: one table
    python benchmark.py phases                # where one outer iteration's time goes
    python benchmark.py curves                # transition curves: batched vs one image at a time
    python benchmark.py data                  # the teacher-training data path vs torchvision's
    python benchmark.py gpu                   # all of the above on CUDA, in one markdown file

Ratios are meaningful within one run only: these machines are noisy, so every table measures its
variants one after another in one process.
"""
import argparse
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import zskt
import zskt_run
import zskt_utils
from author_reference import author_transition_curves, author_zero_shot_iteration


# ----------------------------------------------------------------------------------------------
# Peak FLOP/s: cores x vector lanes x FMA units x 2 FLOP x clock on a CPU, datasheets on a GPU.

# Dense TFLOP/s from NVIDIA's datasheets (no sparsity): fp32 on CUDA cores, tf32 and bf16 tensor.
GPU_PEAK = {"H200": (67, 495, 989), "H100 PCIe": (51, 378, 756), "H100": (67, 495, 989),
            "A100": (19.5, 156, 312), "L4": (30.3, 60, 121), "RTX 4090": (82.6, 82.6, 165.2)}


def cpu_flags():
    text = zskt_utils.cpu_info()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M)[1].split()) if "flags" in text else set()
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    return flags, (max(mhz) * 1e6 if mhz else None)


def peak(device, amp=False):
    """(FLOP/s, how it was derived) of `device` in fp32, or bf16 with `amp`; (None, why) when
    unknown."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, (fp32, _tf32, bf16) in GPU_PEAK.items():
            if key in name:
                value, kind = (bf16, "bf16 tensor") if amp else (fp32, "fp32")
                return value * 1e12, f"{name}: {kind} datasheet peak ({value} TFLOP/s dense)"
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
        kind = "bf16" if lanes == 32 else "fp32"
        per_cycle, how = lanes * 2 * 2, f"{lanes} {kind} lanes x 2 FMA units x 2 FLOP"
    how = f"{cores} cores x {how} x {clock / 1e9:.2f} GHz (base clock from /proc/cpuinfo)"
    return cores * per_cycle * clock, how


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
    """FLOPs of fn() as torch's FLOP counter sees them (matmuls and convolutions, forward and
    backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def setup(pair, cfg, device, ours=True, compile=False, image_size=32):
    """Seeded teacher, student, generator and their optimizers, laid out as ours or as the
    author's."""
    torch.manual_seed(0)
    teacher, student = zskt.wrn(pair[0]).eval(), zskt.wrn(pair[1])
    generator = zskt.Generator(cfg.z_dim, image_size)
    layout = torch.channels_last if ours else torch.contiguous_format
    nets = [m.to(device, memory_format=layout) for m in (teacher, student, generator)]
    nets[0].requires_grad_(not ours)  # the author keeps the teacher's gradients on
    opts = (torch.optim.Adam(student.parameters(), cfg.lr_student),
            torch.optim.Adam(generator.parameters(), cfg.lr_generator))
    if compile:
        nets = [torch.compile(m) for m in nets]
    return nets, opts


def variants(args):
    v = [("author's loop, fp32", dict(ours=False, amp=False, compile=False)),
         ("ours, fp32", dict(amp=False, compile=False))]
    v += [("ours, bf16 autocast", dict(amp=True, compile=False))] if args.amp else []
    v += [("ours, compiled, fp32", dict(amp=False, compile=True))] if args.compile else []
    both = args.amp and args.compile
    v += [("ours, compiled, bf16", dict(amp=True, compile=True))] if both else []
    return v


def bench_zskt(args, device, out=print):
    """One table: s per outer iteration, FLOPs, FLOP/s and % of peak of every variant, measured
    in one process."""
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
            # Compiled code hides its FLOPs from the counter: count its eager twin.
            eager = setup(pair, cfg, device, ours, image_size=args.image_size)
            count = flops(lambda: step(*eager[0], *eager[1], cfg))
            s = timed(lambda: [step(*nets, *opts, cfg) for _ in range(args.repeats)], device)
            s /= args.repeats
            base = base or s
            top, _ = peak(device, v["amp"])
            rows.append((f"{pair[0]} -> {pair[1]}", name, s, count, count / s,
                         top and count / s / top, base / s, warm))
            compiled = f" (warm-up with compilation {warm:.0f} s)" if v["compile"] else ""
            out(f"  {rows[-1][0]}, {name}: {s:.3f} s/iteration{compiled}")
    return rows


def table(rows, device, args):
    size = f"{args.image_size}x{args.image_size}"
    lines = [f"Outer iterations of Algorithm 1, batch {args.batch_size}, n_s {args.n_s}, {size}, "
             f"{zskt_utils.device_name(device)}, torch {torch.__version__}; {args.repeats} timed "
             f"iterations each after warm-up, one process.", "",
             "| pair | variant | s / iteration | vs author | GFLOP / iteration | GFLOP/s "
             "| % of peak |",
             "|---|---|---|---|---|---|---|"]
    for pair, name, s, count, rate, frac, speedup, _ in rows:
        share = "n/a" if frac is None else f"{frac:.0%}"
        lines.append(f"| {pair} | {name} | {s:.3f} | {speedup:.2f}x | {count / 1e9:.1f} | "
                     f"{rate / 1e9:.1f} | {share} |")
    for amp in (False, True):
        top, how = peak(device, amp)
        value = "unknown" if top is None else f"{top / 1e9:.0f} GFLOP/s"
        lines.append(f"\nPeak {'bf16' if amp else 'fp32'}: {value} ({how}).")
    return "\n".join(lines)


def bench_phases(args, device, out=print):
    """Time and FLOP/s of the three phases of one outer iteration (ours, fp32 or --amp)."""
    cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s, amp=args.amp)
    lines = ["| pair | phase | ms | GFLOP | GFLOP/s | % of peak |", "|---|---|---|---|---|---|"]
    top = peak(device, args.amp)[0]
    for pair in args.pairs:
        (teacher, student, generator), (opt_s, opt_g) = setup(pair, cfg, device,
                                                              image_size=args.image_size)
        z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
        state = {}

        def teacher_forward():
            with torch.no_grad(), zskt.autocast(device, cfg.amp):
                state["x"] = generator(z)
                state["t"] = teacher(state["x"])

        def student_steps():
            for _ in range(cfg.n_s):
                zskt.student_step(student, state["x"], *state["t"], opt_s, cfg)

        phases = [("generator step (G, T and S forward, backward to G)",
                   lambda: zskt.generator_step(teacher, student, generator, z, opt_g, cfg)),
                  ("pseudo batch and teacher forward", teacher_forward),
                  (f"{cfg.n_s} student steps", student_steps)]
        for name, fn in phases:
            fn()  # warm-up
            s = timed(lambda: [fn() for _ in range(args.repeats)], device) / args.repeats
            count = flops(fn)
            share = "n/a" if top is None else f"{count / s / top:.0%}"
            lines.append(f"| {pair[0]} -> {pair[1]} | {name} | {s * 1e3:.0f} | {count / 1e9:.2f} "
                         f"| {count / s / 1e9:.1f} | {share} |")
            out(lines[-1])
    return "\n".join(lines)


def bench_curves(args, device, out=print):
    """Transition curves: batched (ours) vs one image at a time (the author's), same images."""
    torch.manual_seed(0)
    stepped = zskt.wrn(args.pairs[0][1]).to(device).eval()
    observed = zskt.wrn(args.pairs[0][0]).to(device).eval()
    x = torch.randn(args.images, 3, 32, 32, device=device)
    ours = timed(lambda: zskt.transition_curves(stepped, observed, x, args.steps), device)
    author = timed(lambda: author_transition_curves(stepped, observed, x, args.steps), device)
    line = (f"transition curves, {args.images} images x 9 targets x {args.steps} steps, "
            f"{args.pairs[0][1]} stepped, {args.pairs[0][0]} observed, "
            f"{zskt_utils.device_name(device)}: batched {ours:.2f} s, one image at a time "
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
    seeded = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=seeded)
    labels = torch.randint(0, 10, (n,))
    mean, std = zskt.MEAN_STD["cifar10"]
    model = zskt.wrn(arch).to(dev, memory_format=torch.channels_last)
    opt = tt.sgd(model, 0.1)
    dx, dy, g = images.to(dev), labels.to(dev), torch.Generator(dev).manual_seed(0)

    def data_path():
        idx = torch.randint(0, n, (bs,), device=dev, generator=g)
        x = zskt.normalize(tt.augment(dx[idx], g), mean, std)
        return x.contiguous(memory_format=torch.channels_last), dy[idx]

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

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]

    def collate(batch):
        return torch.stack([tf(im) for im, _ in batch]), torch.tensor([y for _, y in batch])
    loader = torch.utils.data.DataLoader(list(zip(pil, labels.tolist())), bs, shuffle=True,
                                         num_workers=0, collate_fn=collate)
    batches = iter(loader)
    data, train = rate(data_path, 200), rate(step, 5 if dev.type == "cpu" else 50)
    tv = rate(lambda: [t.to(dev, non_blocking=True) for t in next(batches)], 20)
    line = (f"{arch}, batch {bs}, {zskt_utils.device_name(device)}: data path {data:,.0f} "
            f"images/s; data path + training step {train:,.0f} images/s (the data path is "
            f"{train / data:.1%} of a step); torchvision DataLoader + transforms (0 workers) "
            f"{tv:,.0f} images/s")
    out(line)
    return line


def bench_gpu(args, device, out=print):
    """Everything that matters on a GPU, in one call of under 10 minutes, as a markdown file."""
    if args.device == "auto" and not str(device).startswith("cuda"):
        raise zskt_utils.UserError("benchmark.py gpu needs CUDA; pass --device cpu to try the "
                                   "script on the CPU")
    args.amp, args.compile = True, not args.tiny
    parts = [f"# zskt on {zskt_utils.device_name(device)}", "",
             table(bench_zskt(args, device, out), device, args), "",
             "## Phases (fp32)", "", bench_phases(args, device, out), "",
             "## Transition curves", "", bench_curves(args, device, out), "",
             "## Teacher data path", "", bench_data(args, device, out)]
    parts += ["", "## The shapes demo", "", shapes_demo(args, device)]
    Path(args.out).write_text("\n".join(parts) + "\n")
    out(f"wrote {args.out}")


def shapes_demo(args, device):
    """One short zero-shot run on shapes, end to end, with its teacher."""
    import tempfile
    import train_teacher as tt
    short_teacher = ["--epochs", "1", "--max-steps", "2"] if args.tiny else []
    short_run = ["--iterations", "2", "--mte-images", "4", "--mte-steps", "2"] if args.tiny else []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tt.main(["--out", f"{d}/teacher", "--device", str(device), *short_teacher])
        t1 = time.perf_counter()
        zskt_run.main(["--teacher-checkpoint", f"{d}/teacher/model.pt", "--out", f"{d}/run",
                       "--device", str(device), *short_run])
        summary = json.loads(Path(f"{d}/run/summary.json").read_text())
    return (f"train_teacher.py {t1 - t0:.0f} s; zskt.py {summary['iterations']} iterations "
            f"{summary['seconds']:.0f} s: student {summary['student_test_acc']:.2%}, MTE "
            f"{summary['mte']:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("peak", "zskt", "phases", "curves", "data", "gpu"))
    p.add_argument("--pairs", nargs="+", default=["wrn-40-2:wrn-16-1", "wrn-16-2:wrn-16-1"],
                   help="teacher:student pairs (default: wrn-40-2:wrn-16-1 wrn-16-2:wrn-16-1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-s", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32, help="32 (CIFAR, SVHN) or 16 (shapes)")
    p.add_argument("--repeats", type=int, default=3, help="timed outer iterations per variant")
    p.add_argument("--amp", action="store_true", help="also measure bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmark-gpu.md", help="where `gpu` writes its markdown")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    args = p.parse_args(argv)
    args.pairs = [tuple(pair.split(":")) for pair in args.pairs]
    for pair in args.pairs:
        if len(pair) != 2:
            raise zskt_utils.UserError(f"--pairs {':'.join(pair)}: give TEACHER:STUDENT, e.g. "
                                       f"wrn-40-2:wrn-16-1")
        for name in pair:
            with zskt_utils.user_input():
                zskt.wrn(name)  # an unknown name is refused before any timing
    device = zskt_utils.resolve_device(args.device)
    zskt_utils.full_fp32()
    torch.backends.cudnn.benchmark = True
    if args.what == "peak":
        return print_peak(device)
    if args.what == "zskt":
        return print(table(bench_zskt(args, device), device, args))
    benches = {"phases": bench_phases, "curves": bench_curves, "data": bench_data, "gpu": bench_gpu}
    benches[args.what](args, device)


def print_peak(device):
    for amp in (False, True):
        top, how = peak(device, amp)
        rate = matmul_rate(device, torch.bfloat16 if amp else torch.float32)
        value = "unknown" if top is None else f"{top / 1e9:,.0f} GFLOP/s"
        share = f" = {rate / top:.0%} of it" if top else ""
        print(f"{'bf16' if amp else 'fp32'}: peak {value} ({how}); a 2048x2048 matmul reaches "
              f"{rate / 1e9:,.0f} GFLOP/s{share}")


if __name__ == "__main__":
    zskt_utils.run_cli(main)
