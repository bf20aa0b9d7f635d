"""The author's code, written out independently of zskt.py: the ground truth of the equivalence
tests and the baseline of benchmark.py. Facts from github.com/polo5/ZeroShotKnowledgeTransfer
(models/wresnet.py, models/generator.py, solver.py, utils/transition_curves.py); the code is ours.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def author_divergence(student_logits, teacher_logits, T):
    """The author's solver.py divergence: F.kl_div with its element-wise 'mean' (the default of
    PyTorch 1.0)."""
    with warnings.catch_warnings():  # torch warns that 'mean' also divides by the classes
        warnings.simplefilter("ignore")
        log_s, p_t = F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1)
        return F.kl_div(log_s, p_t, reduction="mean")


def author_attention_diff(s, t):
    """The author's attention_diff (from szagoruyko's attention-transfer utils.py)."""
    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))
    return (at(s) - at(t)).pow(2).mean()


def author_zero_shot_iteration(teacher, student, generator, opt_student, opt_generator, cfg):
    """Algorithm 1 structured as in the author's solver.py, with its own loss functions: plain
    backward() in the generator step (teacher and student weight gradients are computed too), and
    the generator re-run with autograd in every student step, the student loss back-propagated
    through it."""
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
    with torch.no_grad():
        C = stepped(x[:1])[0].shape[1]
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
                loss = F.cross_entropy(logits, torch.tensor([j], device=xk.device))
                grad, = torch.autograd.grad(loss, xk)
                xk = (xk - step_size * grad).detach().requires_grad_(True)
    return p_s, p_o


def author_wrn_forward(sd, x, training):
    """The author's models/wresnet.py (adapted from xternalz), as functions of a state dict: a
    pre-activation block whose 1x1 shortcut takes relu(bn1(x)) when the width changes; the group
    outputs (before the final BN-ReLU) are the attention layers; 8x8 average pooling at 32x32."""
    def bn(h, k):
        rm, rv = sd[k + ".running_mean"].clone(), sd[k + ".running_var"].clone()
        return F.batch_norm(h, rm, rv, sd[k + ".weight"], sd[k + ".bias"], training, 0.1, 1e-5)

    def block(h, p, stride):
        equal = p + "convShortcut.weight" not in sd
        o = F.relu(bn(h, p + "bn1"))
        if not equal:
            h = o  # the author overwrites x with relu(bn1(x)) before the shortcut
        o = F.relu(bn(F.conv2d(o, sd[p + "conv1.weight"], stride=stride, padding=1), p + "bn2"))
        o = F.conv2d(o, sd[p + "conv2.weight"], padding=1)
        return (h if equal else F.conv2d(h, sd[p + "convShortcut.weight"], stride=stride)) + o

    h, acts = F.conv2d(x, sd["conv1.weight"], padding=1), []
    for g, stride in ((1, 1), (2, 2), (3, 2)):
        n = len({k.split(".")[2] for k in sd if k.startswith(f"block{g}.layer.")})
        for i in range(n):
            h = block(h, f"block{g}.layer.{i}.", stride if i == 0 else 1)
        acts.append(h)
    h = F.avg_pool2d(F.relu(bn(h, "bn1")), 8).flatten(1)
    return F.linear(h, sd["fc.weight"], sd["fc.bias"]), acts


def author_generator_forward(sd, z, size=32):
    """The author's models/generator.py (HEAD): linear -> BN -> (up x2, conv, BN, LeakyReLU 0.2)
    x 2 -> conv -> affine BN, always with batch statistics; as functions of our state dict."""
    def bn(h, k):
        return F.batch_norm(h, None, None, sd[k + ".weight"], sd[k + ".bias"], True, 0.1, 1e-5)

    h = F.linear(z, sd["linear.weight"], sd["linear.bias"]).view(len(z), 128, size // 4, size // 4)
    h = bn(h, "net.0")
    for conv, norm in (("net.2", "net.3"), ("net.6", "net.7")):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.leaky_relu(bn(F.conv2d(h, sd[conv + ".weight"], sd[conv + ".bias"], padding=1), norm),
                         0.2)
    return bn(F.conv2d(h, sd["net.9.weight"], sd["net.9.bias"], padding=1), "net.10")
