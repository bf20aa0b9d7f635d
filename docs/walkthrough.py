# %% [markdown]
# # Zero-shot knowledge transfer, step by step
#
# A guided tour of Micaelli & Storkey, *Zero-shot Knowledge Transfer via Adversarial Belief
# Matching* (NeurIPS 2019, arXiv 1905.09768 v3), with the functions of `zskt.py`, on the built-in
# `shapes` data. Open it in an editor that knows `# %%` cells (VS Code, PyCharm, Spyder, Jupytext)
# and run it cell by cell, or run it whole from the repository's folder:
# `python docs/walkthrough.py` (4 minutes on a 2-core CPU). Figures go to
# `runs/walkthrough/`; in a notebook they also appear below their cell.

# %%
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import torch

for where in (Path.cwd(), Path.cwd().parent):  # the repository, from its folder or from docs/
    if (where / "zskt.py").exists():
        sys.path.insert(0, str(where))
import train_teacher  # noqa: E402
import zskt  # noqa: E402

QUICK = os.environ.get("ZSKT_WALKTHROUGH_QUICK") == "1"  # the test suite runs a shortened copy
OUT = Path("runs/walkthrough")
OUT.mkdir(parents=True, exist_ok=True)
device = zskt.resolve_device("auto")  # CUDA when there is one, else the CPU

# %% [markdown]
# ## 1. A teacher, trained on data we will then pretend to have lost
#
# Section 4.1: the teachers are WideResNets trained the usual way. `train_teacher.py` trains the
# demo's WRN-16-1 in about 30 s; `python train_teacher.py` saves it where `zskt.py` looks for it,
# and `zskt.load_model` reads it (or one of the author's published checkpoints).

# %%
teacher_file = Path("checkpoints/shapes-wrn-16-1.pt")
if not teacher_file.exists():
    teacher_file = OUT / "teacher" / "model.pt"
    if not teacher_file.exists():
        train_teacher.main(["--out", str(OUT / "teacher"), *(["--epochs", "1", "--max-steps", "3"] if QUICK else [])])
teacher, meta = zskt.load_model(teacher_file)
teacher = teacher.to(device).eval().requires_grad_(False)
x_test, y_test, classes = zskt.load_dataset("shapes", "test")
mean, std = meta["mean"], meta["std"]
print(f"teacher {zskt.infer_arch(teacher.state_dict())[0]}: "
      f"{zskt.accuracy(teacher, x_test, y_test, mean, std):.2%} test accuracy on {len(y_test)} images")

# %% [markdown]
# ## 2. Why not simply match the teacher on noise?
#
# The paper's Appendix 2: images of uniform noise are classified as one or two classes by every
# teacher it tried, so a student trained on noise would learn little about the others. The same
# happens here (`zskt.predict`: the teacher's class for each uint8 image).

# %%
noise = torch.randint(0, 256, (1000, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
counts = torch.bincount(zskt.predict(teacher, noise, mean, std), minlength=len(classes))
print("the teacher's classes on 1000 noise images:", {c: int(n) for c, n in zip(classes, counts) if n})

# %% [markdown]
# ## 3. Algorithm 1: a generator that hunts for disagreement, a student that catches up
#
# Section 3.1. The generator G(z) makes pseudo images and is trained to *maximise*
# KL(teacher || student) on them (`zskt.generator_loss`, L_G = -KL); the student minimises the
# same KL plus the attention term of Eq. 1 (`zskt.student_loss`, beta = 250). One outer iteration
# (`zskt.zero_shot_iteration`) takes n_G = 1 generator step and then n_S student steps on the
# updated generator's pseudo batch. The demo's settings (`zskt.make_config("shapes")`) differ from
# the paper's where the README's *Settings* table says why: 750 iterations, batch 64, n_S = 20.
# Here we run 300 iterations (a few minutes on a CPU); `train_zero_shot` does the same with
# checkpoints, logs and plots.

# %%
cfg = zskt.make_config("shapes", iterations=4 if QUICK else 300)
torch.manual_seed(cfg.seed)
cl = torch.channels_last
student = zskt.wrn(cfg.student, len(classes)).to(device, memory_format=cl)
generator = zskt.Generator(cfg.z_dim, image_size=x_test.shape[-1]).to(device, memory_format=cl)
opt_s = torch.optim.Adam(student.parameters(), cfg.lr_student)
opt_g = torch.optim.Adam(generator.parameters(), cfg.lr_generator)
schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, cfg.iterations) for o in (opt_s, opt_g)]
teacher_pred = zskt.predict(teacher, x_test, mean, std)
history = []
for it in range(1, cfg.iterations + 1):
    out = zskt.zero_shot_iteration(teacher, student, generator, opt_s, opt_g, cfg)
    for schedule in schedules:
        schedule.step()
    if it % 25 == 0 or it == cfg.iterations:
        pred = zskt.predict(student, x_test, mean, std)  # the test set only measures; it never trains
        history.append((it, (pred == y_test).float().mean().item(), (pred == teacher_pred).float().mean().item(),
                        out["teacher_probs"].amax(1).mean().item(), out["student_probs"].amax(1).mean().item()))
        print(f"iteration {it}: student {history[-1][1]:.2%}, agrees with the teacher on {history[-1][2]:.2%}; "
              f"top-class probability on the pseudo batch: teacher {history[-1][3]:.2f}, student {history[-1][4]:.2f}")

# %%
its, acc, agree, t_conf, s_conf = zip(*history)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(its, acc, label="student test accuracy"), left.plot(its, agree, label="agreement with the teacher")
right.plot(its, t_conf, label="teacher"), right.plot(its, s_conf, label="student")
left.set(xlabel="iteration", ylim=(0, 1)), right.set(xlabel="iteration", ylim=(0, 1),
                                                     title="top-class probability on pseudo images")
left.legend(), right.legend()
fig.savefig(OUT / "history.png")

# %% [markdown]
# The student learns the teacher's test-set answers without seeing one real image. Section 4.3 of
# the paper reports the teacher confident (top-class probability about 0.8) and the student not
# (about 0.3) on the pseudo images: the generator keeps moving to where they disagree.
#
# ## 4. What the generator draws
#
# Each pseudo image with the class the teacher sees in it (`zskt.show_samples`). They look nothing
# like shapes, yet they carry the teacher's decision boundaries (Figure 3 of the paper shows the
# same for CIFAR-10).

# %%
zskt.show_samples(generator, teacher, mean, std, classes).savefig(OUT / "samples.png")

# %% [markdown]
# ## 5. Belief matching near decision boundaries: transition curves and MTE
#
# Section 4.4, Algorithm 2. Take test images on which the student and the teacher agree, push each
# towards every other class j by gradient steps on the *student*, and record p_j of both networks
# at each step. A student that matches its teacher near the boundaries gives the same curves; the
# Mean Transition Error (MTE) is their mean absolute gap. For comparison, a student distilled
# with KD+AT from 10 real images per class (`train_teacher.py --distill-from`, the paper's few-shot
# baseline).

# %%
kd_dir = OUT / "kdat-m10"
if not (kd_dir / "model.pt").exists():
    train_teacher.main(["--arch", "wrn-16-1", "--samples-per-class", "10", "--distill-from", str(teacher_file),
                        "--out", str(kd_dir), "--overwrite",  # quick: M = 100, so 20 epochs instead of 200
                        *(["--epochs", "1", "--max-steps", "3", "--samples-per-class", "100"] if QUICK else [])])
kd_student = zskt.load_model(kd_dir / "model.pt")[0].to(device)
panels = []
for name, stepped in (("zero-shot", student), ("KD+AT, M = 10", kd_student)):
    x, labels, _ = zskt.agreeing_images(stepped, teacher, x_test, y_test, mean, std, n=10 if QUICK else 100)
    p_stepped, p_teacher = zskt.transition_curves(stepped, teacher, x, steps=3 if QUICK else 30, labels=labels)
    panels.append((name, p_stepped, p_teacher))
    print(f"{name}: test accuracy {zskt.accuracy(stepped, x_test, y_test, mean, std):.2%}, "
          f"MTE {zskt.mean_transition_error(p_stepped, p_teacher):.3f}")
zskt.plot_transition_curves(panels).savefig(OUT / "transition.png")

# %% [markdown]
# As in the paper's Table 2 and Figure 4, the zero-shot student follows its teacher across the
# decision boundaries far more closely (a lower MTE) than the student that saw real images. Next:
# `docs/exercises.md`, and `python toy.py` for the paper's 2-D picture of why (Figure 1).
