"""Benchmarks against plain re-implementations of the author's code structure.

The reference functions here are also the ground truth of the equivalence tests in test_zskt.py.

    python benchmark.py zskt --teacher wrn-40-2 --student wrn-16-1 --batch-size 128
    python benchmark.py curves --teacher wrn-40-2 --student wrn-16-1 --images 10 --steps 20
"""
import argparse
import time

import torch
import torch.nn as nn

import zskt


def author_zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """Algorithm 1 structured as in the author's solver: plain backward() in the generator step
    (teacher and student weight gradients are computed too), and the generator re-run with
    autograd in every student step, the student loss back-propagated through it."""
    z = torch.randn(cfg.batch_size, cfg.z_dim, device=next(student.parameters()).device)
    for _ in range(cfg.n_g):
        x = generator(z)
        loss_g = zskt.generator_loss(student(x)[0], teacher(x)[0], cfg.temperature)
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
        loss_s = zskt.student_loss(s_logits, t_logits, s_acts, t_acts, cfg.beta, cfg.temperature)
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


def timed(fn, device):
    """Wall seconds of fn(), waiting for queued GPU work on both ends."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def bench_zskt(args, device):
    """Seconds per outer iteration: ours (channels_last) vs the author's loop structure (NCHW)."""
    cfg = zskt.Config(batch_size=args.batch_size, n_s=args.n_s)
    results = {}
    for name, step in (("ours", zskt.zero_shot_iteration), ("author", author_zero_shot_iteration)):
        torch.manual_seed(0)
        teacher, student, generator = zskt.wrn(args.teacher).to(device).eval(), zskt.wrn(args.student).to(device), zskt.Generator().to(device)
        if name == "ours":
            teacher.requires_grad_(False)
            for m in (teacher, student, generator):
                m.to(memory_format=torch.channels_last)
        opts = torch.optim.Adam(student.parameters(), cfg.lr_student), torch.optim.Adam(generator.parameters(), cfg.lr_generator)
        step(teacher, student, generator, *opts, cfg)  # warm-up
        results[name] = timed(lambda: [step(teacher, student, generator, *opts, cfg) for _ in range(args.repeats)], device) / args.repeats
        print(f"{name:>6}: {results[name]:.3f} s per outer iteration", flush=True)
    print(f"{args.teacher} -> {args.student}, batch {cfg.batch_size}, n_s {cfg.n_s}, {device}, "
          f"{torch.get_num_threads()} threads: ours is {results['author'] / results['ours']:.2f}x faster")


def bench_curves(args, device):
    """Transition curves: batched (ours) vs one image at a time (the author's), same images and steps."""
    torch.manual_seed(0)
    stepped, observed = zskt.wrn(args.student).to(device).eval(), zskt.wrn(args.teacher).to(device).eval()
    x = torch.randn(args.images, 3, 32, 32, device=device)
    ours = timed(lambda: zskt.transition_curves(stepped, observed, x, args.steps), device)
    author = timed(lambda: author_transition_curves(stepped, observed, x, args.steps), device)
    print(f"transition curves, {args.images} images x 9 targets x {args.steps} steps, {args.student} stepped, "
          f"{args.teacher} observed, {device}: batched {ours:.2f} s, one image at a time {author:.2f} s, "
          f"{author / ours:.1f}x faster")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("zskt", "curves"))
    p.add_argument("--teacher", default="wrn-40-2")
    p.add_argument("--student", default="wrn-16-1")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-s", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = zskt.resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    {"zskt": bench_zskt, "curves": bench_curves}[args.what](args, device)
