"""Benchmarks against plain re-implementations of the author's code structure.

The reference functions here are also the ground truth of the equivalence tests in test_zskt.py.

    python benchmark.py zskt --teacher wrn-40-2 --student wrn-16-1 --batch-size 128
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
                loss = nn.functional.cross_entropy(logits, torch.tensor([j]))
                grad, = torch.autograd.grad(loss, xk)
                xk = (xk - step_size * grad).detach().requires_grad_(True)
    return p_s, p_o
