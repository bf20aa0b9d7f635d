"""Benchmarks: our loop against a plain re-implementation of the author's code structure, FLOPs
counted by torch's FLOP counter, and the fraction of the machine's peak they reach.

The author's loop with the author's loss functions, and Algorithm 2 one image at a time, come from
author_reference.py, which is also the ground truth of the equivalence tests.

    python benchmark.py peak                  # this machine's peak FLOP/s, and a big matmul
    python benchmark.py zskt                  # s per iteration, author's loop vs ours, FLOP/s
    python benchmark.py zskt --amp --compile  # ... plus bf16 autocast and torch.compile: one table
    python benchmark.py phases                # where one outer iteration's time goes
    python benchmark.py curves                # transition curves: batched vs one image at a time
    python benchmark.py data                  # the teacher-training data path vs torchvision's
    python benchmark.py gpu                   # the GPU check: ms per iteration, eager and graphed,
                                              # against the floor; graphed = eager; the above

Ratios are meaningful within one run only: these machines are noisy, so every table measures its
variants one after another in one process.
"""
import argparse
import copy
import gc
import json
import re
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import zskt
import zskt_graph
import zskt_models
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

def is_cuda(device):
    return str(device).startswith("cuda")


def synchronize(device):
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def timed(fn, device):
    """Wall seconds of fn(), waiting for queued GPU work on both ends."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def ms_per_call(fn, device, chunks, per_chunk):
    """Milliseconds per call of fn, once per chunk of per_chunk calls: CUDA events around each
    chunk on a GPU (the device's own clock, launch gaps included), the wall clock on a CPU."""
    synchronize(device)
    times = []
    for _ in range(chunks):
        if is_cuda(device):
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            for _ in range(per_chunk):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / per_chunk)
        else:
            times.append(timed(lambda: [fn() for _ in range(per_chunk)], device) * 1e3 / per_chunk)
    return times


def flops(fn):
    """FLOPs of fn() as torch's FLOP counter sees them (matmuls and convolutions, forward and
    backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Traffic(TorchDispatchMode):
    """The aten operations a call dispatches and the bytes they move, each operation reading its
    tensor inputs once and writing its outputs once (views and allocations move none): the
    traffic of the unfused operations, which a fused version could undercut."""
    FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
            "_local_scalar_dense"}

    def __init__(self):
        super().__init__()
        self.ops, self.bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if not (func.is_view or func._opname in self.FREE):
            tensors = [t for t in tree_flatten((args, kwargs, out))[0]
                       if isinstance(t, torch.Tensor)]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def setup(pair, cfg, device, ours=True, compile=False, image_size=32):
    """Seeded teacher, student, generator and their optimizers with the cosine schedules
    (zskt.Optimizers), laid out as ours or as the author's."""
    torch.manual_seed(0)
    teacher, student = (zskt_models.build(name) for name in pair)
    generator = zskt.Generator(cfg.z_dim, image_size)
    layout = torch.channels_last if ours else torch.contiguous_format
    nets = [m.to(device, memory_format=layout) for m in (teacher, student, generator)]
    nets[0].eval().requires_grad_(not ours)  # the author keeps the teacher's gradients on
    opts = zskt.optimizers(nets[1], nets[2], cfg)
    if compile:
        nets = [torch.compile(m) for m in nets]
    return nets, opts


def variants(args):
    v = [("author fp32", dict(ours=False, amp=False, compile=False)),
         ("eager fp32", dict(amp=False, compile=False))]
    v += [("eager amp", dict(amp=True, compile=False))] if args.amp else []
    v += [("eager compiled fp32", dict(amp=False, compile=True))] if args.compile else []
    both = args.amp and args.compile
    v += [("eager compiled amp", dict(amp=True, compile=True))] if both else []
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
                step(*nets, opts.student, opts.generator, cfg)
            warm = time.perf_counter() - t0
            # Compiled code hides its FLOPs from the counter: count its eager twin.
            twin, twin_opts = setup(pair, cfg, device, ours, image_size=args.image_size)
            count = flops(lambda: step(*twin, twin_opts.student, twin_opts.generator, cfg))
            s = timed(lambda: [step(*nets, opts.student, opts.generator, cfg)
                               for _ in range(args.repeats)], device)
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
        (teacher, student, generator), opts = setup(pair, cfg, device, image_size=args.image_size)
        z = torch.randn(cfg.batch_size, cfg.z_dim, device=device)
        state = {}

        def teacher_forward():
            with torch.no_grad(), zskt.autocast(device, cfg.amp):
                state["x"] = generator(z)
                state["t"] = teacher(state["x"])

        def student_steps():
            for _ in range(cfg.n_s):
                zskt.student_step(student, state["x"], *state["t"], opts.student, cfg)

        phases = [("generator step (G, T and S forward, backward to G)",
                   lambda: zskt.generator_step(teacher, student, generator, z, opts.generator,
                                               cfg)),
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
    stepped = zskt_models.build(args.pairs[0][1]).to(device).eval()
    observed = zskt_models.build(args.pairs[0][0]).to(device).eval()
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
    model = zskt_models.build(arch).to(dev, memory_format=torch.channels_last)
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



# ----------------------------------------------------------------------------------------------
# benchmark.py gpu: the outer iteration eager and replayed as one CUDA graph (zskt_graph.py),
# against its floor; the graphed iteration against the eager one; then the other benchmarks.
# One process, partial results written as it goes, a failing part recorded and skipped.

GPU_PAIRS = ("wrn-40-2:wrn-16-1", "wrn-16-2:wrn-16-1", "resnet34:resnet18")
PAIRS = ("wrn-40-2:wrn-16-1", "wrn-16-2:wrn-16-1")  # the other benchmarks' default
DOCS_JSON = Path(__file__).resolve().parent / "docs" / "benchmarks-gpu.json"
LEGEND = {
    "graph fp32": "ours, each outer iteration replayed as one CUDA graph (zskt_graph.py), fp32",
    "graph amp": "the same with bf16 autocast (`--amp`)",
    "eager fp32": "ours, fp32: zskt.algorithm_1 as a run runs it (the default path)",
    "eager amp": "ours, bf16 autocast (`--amp`), uncaptured",
    "author fp32": "the author's loop, fp32: author_reference.py (the generator re-run with "
                   "autograd in every student step; teacher and student weight gradients "
                   "computed in the generator step)",
    "graph compiled fp32": "the CUDA graph of torch.compile'd networks (`--compile`)",
    "eager compiled fp32": "torch.compile'd networks, uncaptured (`--compile`)",
}


def gpu_variants(args):
    """The variants of `gpu`, the uncaptured ones first: a capture that fails cannot take the
    baselines with it."""
    names = ["eager fp32", "eager amp", "author fp32", "graph fp32", "graph amp"]
    return names + (["eager compiled fp32", "graph compiled fp32"] if args.compile else [])


def outer_loop(variant, pair, args, device):
    """A function that runs one outer iteration of `variant` per call, the schedules stepped as
    in a run, on networks seeded alike for every variant. On a CPU the graph variants run their
    code uncaptured (a dry run of the script)."""
    kind = variant.split()[0]
    cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s, amp=variant.endswith("amp"))
    nets, opts = setup(pair, cfg, device, kind != "author", "compiled" in variant,
                       args.image_size)
    if kind == "author":
        def step():
            author_zero_shot_iteration(*nets, opts.student, opts.generator, cfg)
            opts.student_schedule.step()
            opts.generator_schedule.step()
        return step
    if kind == "graph":
        loop = zskt_graph.algorithm_1(*nets, opts, cfg, capture=is_cuda(device))
    else:
        loop = zskt.algorithm_1(*nets, opts, cfg)
    return lambda: next(loop)


def ceilings(device, tiny=False):
    """The two rates of the floor, measured (datasheets are only leads): a large matmul in fp32
    (TF32 off, as every script runs) and in bf16, and a large device-to-device copy (bytes read
    plus bytes written), on random data. A CPU gets sizes that take seconds."""
    n, numel = (256, 2 ** 20) if tiny else (8192, 2 ** 28) if is_cuda(device) else (1024, 2 ** 24)
    found = {"matmul_n": n, "copy_mib": numel * 4 / 2 ** 20}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b, c = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(3))
        torch.mm(a, b, out=c)
        ms = statistics.median(ms_per_call(lambda: torch.mm(a, b, out=c), device, 5, 2))
        found[f"{name}_flop_per_s"] = 2 * n ** 3 / ms * 1e3
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    ms = statistics.median(ms_per_call(lambda: y.copy_(x), device, 5, 4))
    found["copy_byte_per_s"] = 2 * x.nbytes / ms * 1e3
    return found


def work(variant, pair, args, device):
    """GFLOP, GB moved (Traffic) and aten operations of one uncaptured iteration of `variant`'s
    maths: graphs and compiled code hide theirs, and compute what their eager twin does."""
    twin = variant.replace("graph", "eager").replace("compiled ", "")
    step = outer_loop(twin, pair, args, device)
    step()  # Adam's state is created outside the count
    count = flops(step)
    with Traffic() as traffic:
        step()
    return {"gflop": count / 1e9, "gbyte": traffic.bytes / 1e9, "aten_ops": traffic.ops}


def floor_ms(counted, amp, ceiling):
    """(floor in ms, what binds it): the larger of FLOPs over the matmul rate and bytes over the
    copy bandwidth."""
    rate = ceiling["bf16_flop_per_s" if amp else "fp32_flop_per_s"]
    arithmetic = counted["gflop"] * 1e9 / rate * 1e3
    memory = counted["gbyte"] * 1e9 / ceiling["copy_byte_per_s"] * 1e3
    return (arithmetic, "FLOPs") if arithmetic >= memory else (memory, "bytes")


def release(device):
    """Frees the device memory the last measurement held (its networks, its graph's pool)."""
    if is_cuda(device):
        gc.collect()
        torch.cuda.empty_cache()


def snapshot(nets, opts):
    """Everything the next iteration depends on, copied: weights, optimizers, schedules, RNG."""
    return copy.deepcopy({"networks": [nets[1].state_dict(), nets[2].state_dict()],
                          "optimizers": [zskt_graph.portable(o.state_dict()) for o in opts],
                          "rng": zskt_utils.rng_state()})


def restore(state, nets, opts):
    """Loads a snapshot, which stays as it was: Adam's load_state_dict keeps the tensors it is
    given where their device and dtype fit, and would update them in place."""
    state = copy.deepcopy(state)
    for net, saved in zip(nets[1:], state["networks"]):
        net.load_state_dict(saved)
    for opt, saved in zip(opts, state["optimizers"]):
        opt.load_state_dict(saved)
    zskt_utils.set_rng_state(state["rng"])


def trajectory(step, nets, iterations):
    """The student's and the generator's weights and BatchNorm statistics (float64 vectors)
    after the first and the last of `iterations` calls of step, and every iteration's losses."""
    def flat(model):
        return torch.cat([v.double().flatten() for v in model.state_dict().values()
                          if v.is_floating_point()])
    weights, losses = [], []
    for i in range(iterations):
        out = step()
        losses.append(torch.stack([out["loss_generator"], out["loss_student"]]).double())
        for _ in range((i == 0) + (i == iterations - 1)):  # the first, the last (once or twice)
            weights.append({"student": flat(nets[1]), "generator": flat(nets[2])})
    return {"weights": weights, "losses": torch.stack(losses).cpu()}


def relative(a, b):
    """||a - b|| / ||b||."""
    return ((a - b).norm() / b.norm()).item()


def equality(pair, args, device, iterations):
    """Equality (1): the graphed iteration against the eager one in fp32, from the same state
    and seed (the state after zskt_graph.WARMUP uncaptured iterations, where the graph is
    captured): relative differences of the student's and the generator's weights after 1 and
    after `iterations` iterations, and of the losses. cuDNN picks deterministic kernels here.
    Two controls say what the differences mean: the same graph-ready iteration uncaptured (the
    graph alone should change nothing), and an eager run whose weights start one float32
    rounding step away (Adam turns small differences into larger ones wherever a gradient is
    near its eps). Capturable Adam computes its bias corrections in float32 on the device, where
    1 - beta2 carries a relative error of 1.3e-5 (0.999 rounds to float32); eager Adam computes
    them in float64 on the host."""
    cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s)
    deterministic, torch.backends.cudnn.deterministic = torch.backends.cudnn.deterministic, True
    try:
        nets, opts = setup(pair, cfg, device, image_size=args.image_size)
        graphed = zskt_graph.algorithm_1(*nets, opts, cfg, capture=is_cuda(device))
        for _ in range(zskt_graph.WARMUP):
            next(graphed)  # uncaptured: the next call captures, then replays
        state = snapshot(nets, opts)
        runs = {"graph": trajectory(lambda: next(graphed)[1], nets, iterations)}
        for name in ("uncaptured", "eager", "eager nudged"):
            twin, twin_opts = setup(pair, cfg, device, image_size=args.image_size)
            restore(state, twin, twin_opts)
            if name == "eager nudged":  # every weight one float32 rounding step away
                with torch.no_grad():
                    for p in [*twin[1].parameters(), *twin[2].parameters()]:
                        p.mul_(1 + 2 ** -23)
            first = zskt_graph.WARMUP + 1
            loop = (zskt_graph.algorithm_1(*twin, twin_opts, cfg, first, capture=False)
                    if name == "uncaptured" else zskt.algorithm_1(*twin, twin_opts, cfg, first))
            runs[name] = trajectory(lambda: next(loop)[1], twin, iterations)
    finally:
        torch.backends.cudnn.deterministic = deterministic

    def compare(a, b):
        found = {f"{net}_after_{n}": relative(a["weights"][i][net], b["weights"][i][net])
                 for i, n in ((0, 1), (1, iterations)) for net in ("student", "generator")}
        scale = b["losses"].abs().clamp_min(1e-12)
        worst = ((a["losses"] - b["losses"]).abs() / scale).amax(0).tolist()
        return {**found, "loss_generator_max_rel": worst[0], "loss_student_max_rel": worst[1]}
    losses = {name: {"loss_generator": [r["losses"][0, 0].item(), r["losses"][-1, 0].item()],
                     "loss_student": [r["losses"][0, 1].item(), r["losses"][-1, 1].item()]}
              for name, r in runs.items()}
    return {"pair": ":".join(pair), "iterations": iterations,
            "from_iteration": zskt_graph.WARMUP + 1,
            "graph_vs_eager": compare(runs["graph"], runs["eager"]),
            "graph_vs_uncaptured": compare(runs["graph"], runs["uncaptured"]),
            "nudged_vs_eager": compare(runs["eager nudged"], runs["eager"]),
            "losses_first_and_last": losses,
            "lr_schedule_max_abs_diff": schedule_difference(device)}


def schedule_difference(device, steps=1000):
    """The largest difference between the cosine schedule of a float learning rate and that of
    a graph_ready float64 tensor one on `device`, over a whole schedule (0: exact)."""
    p = torch.nn.Parameter(torch.zeros(1, device=device))
    plain, ready = torch.optim.Adam([p], 2e-3), torch.optim.Adam([p], 2e-3)
    cosine = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in (plain, ready)]
    zskt_graph.graph_ready(zskt.Optimizers(ready, ready, *cosine))  # as a run: schedules first
    floats, tensors = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns of schedules stepped without Adam steps
        for _ in range(steps):
            for schedule in cosine:
                schedule.step()
            floats.append(plain.param_groups[0]["lr"])
            tensors.append(ready.param_groups[0]["lr"].clone())
    exact = torch.tensor(floats, dtype=torch.float64)
    return (torch.stack(tensors).cpu() - exact).abs().max().item()


def kernel_profile(variant, pair, args, device, iterations=2):
    """What the device does in an iteration of `variant` (torch.profiler after warm-up): the
    kernels and copies per iteration, their summed time (the device busy, gaps excluded), and the
    kernels that take the most. On a CPU (a dry run) aten operations and their own CPU time stand
    in for kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    step = outer_loop(variant, pair, args, device)
    for _ in range(zskt_graph.WARMUP + 2):
        step()
    synchronize(device)
    cuda = is_cuda(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            step()
        synchronize(device)
    if cuda:
        work = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
                if e.device_type == DeviceType.CUDA]
    else:
        work = [(e.name, e.self_cpu_time_total) for e in prof.events()]
    by_name = {}
    for name, us in work:
        by_name[name] = by_name.get(name, 0) + us
    busy = sum(by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    return {"pair": ":".join(pair), "variant": variant,
            "launches_per_iteration": len(work) / iterations,
            "busy_ms_per_iteration": busy / iterations / 1e3,
            "top": [{"name": name[:90], "share": us / max(busy, 1e-9),
                     "ms_per_iteration": us / iterations / 1e3} for name, us in top]}


class Report:
    """benchmark.py gpu's results, written to --json after every change (the device may stop
    the script at any time), and its markdown."""

    def __init__(self, args, device, argv):
        self.path, self.t0 = Path(args.json), time.perf_counter()
        cuda = is_cuda(device)
        self.data = {
            "device": zskt_utils.device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "command": shlex.join(["python", "benchmark.py", *argv]),
            "settings": {"batch_size": args.batch_size, "n_s": args.n_s, "n_g": 1,
                         "clock": "CUDA events" if cuda else "the wall clock",
                         "image_size": args.image_size, "tf32": False, "cudnn_benchmark": True,
                         "timed_iterations": args.chunks * args.per_chunk,
                         "chunks": args.chunks, "warmup": zskt_graph.WARMUP + 2},
            "ceilings": None, "work": {}, "rows": [], "equality": None, "profile": [],
            "errors": [], "skipped": [], "seconds": 0.0, "finished": False}
        self.save()

    def save(self):
        self.data["seconds"] = time.perf_counter() - self.t0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        zskt_utils.write_json(self.path, self.data)

    def elapsed(self):
        return time.perf_counter() - self.t0

    def attempt(self, what, fn, device):
        """fn()'s result, or None with the error recorded (the rest goes on)."""
        try:
            result = fn()
            synchronize(device)  # an asynchronous device error belongs to this part
            return result
        except Exception as e:  # one failing part must not lose the others
            message = f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}" \
                if str(e).strip() else f"{what}: {type(e).__name__}"
            self.data["errors"].append(message)
            print(f"  failed: {message}", flush=True)
            return None
        finally:
            release(device)
            self.save()


def measure_pair(pair, args, device, report):
    """Work counts, then ms per iteration of every variant against its floor, for one pair."""
    name = ":".join(pair)
    counted = {}
    for twin in ("eager fp32", "eager amp", "author fp32"):
        counted[twin] = report.attempt(f"{name} {twin} counts",
                                       lambda: work(twin, pair, args, device), device)
    report.data["work"][name] = counted
    for variant in gpu_variants(args):
        def timed_variant():
            step = outer_loop(variant, pair, args, device)
            for _ in range(zskt_graph.WARMUP + 2):  # the graph is captured in the fourth
                step()
            return ms_per_call(step, device, args.chunks, args.per_chunk)
        chunks = report.attempt(f"{name} {variant}", timed_variant, device)
        row = {"pair": name, "variant": variant,
               "ms": statistics.median(chunks) if chunks else None, "ms_chunks": chunks}
        twin = counted.get("author fp32" if variant.startswith("author") else
                           "eager amp" if variant.endswith("amp") else "eager fp32")
        if twin and report.data["ceilings"]:
            row["floor_ms"], row["floor_bound"] = floor_ms(twin, variant.endswith("amp"),
                                                           report.data["ceilings"])
        report.data["rows"].append(row)
        report.save()
        shown = "failed" if row["ms"] is None else f"{row['ms']:.2f} ms"
        print(f"  {name} {variant}: {shown}", flush=True)


def bench_gpu(args, device, out=print, argv=()):
    """The GPU check of the outer iteration, in one process: the rates of the floor; for the
    first pair the work of an iteration and ms per iteration of every variant, then equality of
    the graphed and the eager iteration; while --budget-s lasts, a kernel profile of the first
    pair, the other pairs and the other benchmarks. Writes --json as it goes and --out (the
    markdown) at the end, and prints the table."""
    if args.device == "auto" and not is_cuda(device):
        raise zskt_utils.UserError("benchmark.py gpu needs CUDA; pass --device cpu to try the "
                                   "script on the CPU")
    if args.json is None:  # a dry run on a CPU must not overwrite the GPU's results
        args.json = DOCS_JSON if is_cuda(device) else "benchmarks-gpu-cpu.json"
    report = Report(args, device, argv)
    out(f"benchmark.py gpu on {report.data['device']}, torch {torch.__version__}, CUDA "
        f"{report.data['cuda']}: writing {args.json} as it goes")
    report.data["ceilings"] = report.attempt("ceilings", lambda: ceilings(device, args.tiny),
                                             device)
    first, rest = args.pairs[0], args.pairs[1:]
    measure_pair(first, args, device, report)
    report.data["equality"] = report.attempt(
        "equality", lambda: equality(first, args, device, args.equality_iterations), device)
    report.save()
    profiled = ("graph fp32",) if args.tiny else ("graph fp32", "graph amp", "eager fp32")
    optional = [(f"profile {v}", lambda v=v: report.data["profile"].append(
        kernel_profile(v, first, args, device, 1 if args.tiny else 2))) for v in profiled]
    optional += [(":".join(pair), lambda pair=pair: measure_pair(pair, args, device, report))
                 for pair in rest]
    for what, fn in optional:
        if report.elapsed() > args.budget_s:
            report.data["skipped"].append(what)
        else:
            report.attempt(what, fn, device)
    sections = other_benchmarks(args, device, report, out)
    report.data["finished"] = True
    report.save()
    text = gpu_markdown(report.data)
    Path(args.out).write_text(text + "\n\n" + sections + "\n")
    out(text)
    out(f"wrote {args.json} and {args.out}")


def other_benchmarks(args, device, report, out):
    """The earlier benchmarks (phases in fp32, transition curves, the teacher's data path, the
    shapes demo) while --budget-s lasts, as markdown sections."""
    args.amp = False
    parts = []
    for title, fn in (("Phases (fp32)", bench_phases), ("Transition curves", bench_curves),
                      ("Teacher data path", bench_data), ("The shapes demo", shapes_demo)):
        if report.elapsed() > args.budget_s:
            report.data["skipped"].append(title)
            text = f"skipped: past --budget-s {args.budget_s:g}"
        else:
            text = report.attempt(title, lambda: fn(args, device, out), device)
        parts += [f"## {title}", "", text or "failed (the JSON's errors say why)", ""]
    return "\n".join(parts)


def gpu_markdown(data):
    """The table for docs/benchmarks.md, what its variants are, equality (1), the profile."""
    s, ceil = data["settings"], data["ceilings"] or {}
    lines = [f"{data['device']}, torch {data['torch']}, CUDA {data['cuda']}, cuDNN "
             f"{data['cudnn']}: batch {s['batch_size']}, n_s {s['n_s']}, n_g {s['n_g']}, "
             f"{s['image_size']}x{s['image_size']}, TF32 off; the median of {s['chunks']} "
             f"chunks of {s['timed_iterations'] // s['chunks']} iterations (schedules included) "
             f"after {s['warmup']} warm-up iterations, timed with {s['clock']}; one process: "
             f"`{data['command']}`.", ""]
    if ceil:
        lines += [f"Floor: FLOPs over a measured {ceil['matmul_n']}x{ceil['matmul_n']} matmul "
                  f"({ceil['fp32_flop_per_s'] / 1e12:.1f} TFLOP/s fp32, "
                  f"{ceil['bf16_flop_per_s'] / 1e12:.1f} bf16), bytes (each aten operation "
                  f"reading its inputs and writing its outputs once) over a measured "
                  f"{ceil['copy_mib']:.0f} MiB copy ({ceil['copy_byte_per_s'] / 1e9:.0f} GB/s "
                  f"read + write); the larger binds.", ""]
    lines += ["| pair | variant | ms / iteration | vs eager fp32 | floor ms (bound) | x floor "
              "| 80,000 iterations |", "|---|---|---|---|---|---|---|"]
    eager = {r["pair"]: r["ms"] for r in data["rows"] if r["variant"] == "eager fp32"}
    for r in data["rows"]:
        pair = r["pair"].replace(":", " → ")
        if r["ms"] is None:
            lines.append(f"| {pair} | {r['variant']} | failed | | | | |")
            continue
        base = eager.get(r["pair"])
        speed = f"{base / r['ms']:.2f}x" if base else ""
        floor = f"{r['floor_ms']:.1f} ({r['floor_bound']})" if "floor_ms" in r else ""
        ratio = f"{r['ms'] / r['floor_ms']:.1f}x" if "floor_ms" in r else ""
        lines.append(f"| {pair} | {r['variant']} | {r['ms']:.2f} | {speed} | {floor} | {ratio} "
                     f"| {zskt_utils.format_time(r['ms'] * 80)} |")
    lines += ["", "| variant | what it is |", "|---|---|"]
    lines += [f"| {v} | {LEGEND[v]} |" for v in dict.fromkeys(r["variant"] for r in data["rows"])]
    eq = data["equality"]
    if eq:
        n = eq["iterations"]
        lines += ["", f"Equality (1), {eq['pair'].replace(':', ' → ')}, fp32, from the state "
                      f"after {eq['from_iteration'] - 1} uncaptured iterations, deterministic "
                      f"cuDNN: relative difference of the weights (student / generator) and the "
                      f"largest relative difference of a loss over the {n} iterations; the "
                      f"cosine learning rates of the tensor schedule differ from the float ones "
                      f"by at most {eq['lr_schedule_max_abs_diff']:g}.", "",
                  f"| runs | after 1 iteration | after {n} | loss_G | loss_S |",
                  "|---|---|---|---|---|"]
        for key, label in (("graph_vs_eager", "graphed vs eager"),
                           ("graph_vs_uncaptured", "graphed vs the same iteration uncaptured "
                                                   "(control)"),
                           ("nudged_vs_eager", "eager, weights one rounding step away, vs "
                                               "eager (control)")):
            d = eq[key]
            lines.append(f"| {label} | {d['student_after_1']:.1e} / {d['generator_after_1']:.1e} "
                         f"| {d[f'student_after_{n}']:.1e} / {d[f'generator_after_{n}']:.1e} | "
                         f"{d['loss_generator_max_rel']:.1e} | {d['loss_student_max_rel']:.1e} |")
    for p in data["profile"]:
        top = "; ".join(f"{k['name']} {k['share']:.0%}" for k in p["top"][:5])
        lines += ["", f"Profile, {p['pair'].replace(':', ' → ')}, {p['variant']}: "
                      f"{p['launches_per_iteration']:.0f} kernels and copies per iteration, the "
                      f"device busy {p['busy_ms_per_iteration']:.2f} ms of it; most time: {top}."]
    for what, items in (("Errors", data["errors"]), ("Skipped (time budget)", data["skipped"])):
        if items:
            lines += ["", f"{what}: " + "; ".join(items)]
    return "\n".join(lines)


def shapes_demo(args, device, out=print):
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
    line = (f"train_teacher.py {t1 - t0:.0f} s; zskt.py {summary['iterations']} iterations "
            f"{summary['seconds']:.0f} s: student {summary['student_test_acc']:.2%}, MTE "
            f"{summary['mte']:.3f}")
    out(line)
    return line




def parse_args(argv):
    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("peak", "zskt", "phases", "curves", "data", "gpu"))
    p.add_argument("--pairs", nargs="+", help=f"teacher:student pairs (default: "
                   f"{' '.join(PAIRS)}; gpu: {' '.join(GPU_PAIRS)})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-s", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32, help="32 (CIFAR, SVHN) or 16 (shapes)")
    p.add_argument("--repeats", type=int, help="timed outer iterations per variant (default 3; "
                   "gpu: 50, in up to 5 chunks timed one by one)")
    p.add_argument("--amp", action="store_true", help="also measure bf16 autocast (gpu: always)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmark-gpu.md", help="where `gpu` writes its markdown")
    p.add_argument("--json", help="where `gpu` writes its results, after every measurement "
                   "(default: docs/benchmarks-gpu.json beside this script on CUDA, "
                   "benchmarks-gpu-cpu.json on a CPU)")
    p.add_argument("--equality-iterations", type=int, help="gpu: iterations of the graphed and "
                   "the eager run compared (default 100)")
    p.add_argument("--budget-s", type=float, default=300, help="gpu: seconds after which the "
                   "profile, the other pairs and the other benchmarks are skipped (default 300); "
                   "the first pair and the equality always run")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: seconds
    args = p.parse_args(argv)
    gpu = args.what == "gpu"
    args.pairs = [tuple(pair.split(":")) for pair in args.pairs or (GPU_PAIRS if gpu else PAIRS)]
    for pair in args.pairs:
        if len(pair) != 2:
            raise zskt_utils.UserError(f"--pairs {':'.join(pair)}: give TEACHER:STUDENT, e.g. "
                                       f"wrn-40-2:wrn-16-1")
        for name in pair:
            with zskt_utils.user_input():
                zskt_models.build(name)  # an unknown name is refused before any timing
    for flag, value in (("--repeats", args.repeats),
                        ("--equality-iterations", args.equality_iterations)):
        if value is not None and value < 1:
            raise zskt_utils.UserError(f"{flag} must be at least 1, not {value}")
    if args.repeats is None:
        args.repeats = 2 if args.tiny else 50 if gpu else 3
    args.chunks = min(2 if args.tiny else 5, args.repeats)
    args.per_chunk = max(1, args.repeats // args.chunks)
    if args.equality_iterations is None:
        args.equality_iterations = 2 if args.tiny else 100
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = zskt_utils.resolve_device(args.device)
    zskt_utils.full_fp32()
    torch.backends.cudnn.benchmark = True
    if args.what == "peak":
        return print_peak(device)
    if args.what == "zskt":
        return print(table(bench_zskt(args, device), device, args))
    if args.what == "gpu":
        return bench_gpu(args, device, argv=argv)
    {"phases": bench_phases, "curves": bench_curves, "data": bench_data}[args.what](args, device)


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
