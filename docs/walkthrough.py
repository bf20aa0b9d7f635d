# %% [markdown]
# # Zero-shot knowledge transfer, step by step
#
# A guided tour of Micaelli & Storkey, *Zero-shot Knowledge Transfer via Adversarial Belief
# Matching* (NeurIPS 2019, arXiv 1905.09768 v3), with the functions of `zskt.py`, on the built-in
# `shapes` data. Open it in an editor that knows `# %%` cells (VS Code, PyCharm, Spyder, Jupytext)
# and run it cell by cell, or run it whole from the repository's folder:
# `python docs/walkthrough.py` (about 5 minutes on a 2-core CPU, 2 threads). Figures go to
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
import zskt  # noqa: E402  (the paper's method)
import zskt_models  # noqa: E402  (networks from files)
import zskt_plots  # noqa: E402  (figures)
from zskt_utils import resolve_device  # noqa: E402

QUICK = os.environ.get("ZSKT_WALKTHROUGH_QUICK") == "1"  # the test suite runs a shortened copy
OUT = Path("runs/walkthrough")
OUT.mkdir(parents=True, exist_ok=True)
device = resolve_device("auto")  # CUDA when there is one, else the CPU

# %% [markdown]
# ## 1. A teacher, trained on data we will then pretend to have lost
#
# Section 4.1: the teachers are WideResNets trained the usual way. `train_teacher.py` trains the
# demo's WRN-16-1 in about 35 s on a 2-core CPU; `python train_teacher.py` saves it where `zskt.py`
# looks for it, and `zskt_models.load_model` reads it (or one of the author's published
# checkpoints). The test split only measures: a `zskt.TestSet` holds its images, labels, class names
# and the teacher's normalisation.

# %%
teacher_file = Path("checkpoints/shapes-wrn-16-1.pt")
if not teacher_file.exists():
    teacher_file = OUT / "teacher" / "model.pt"
    if not teacher_file.exists():
        quick = ["--epochs", "1", "--max-steps", "3"] if QUICK else []
        train_teacher.main(["--out", str(OUT / "teacher"), *quick])
teacher, meta = zskt_models.load_model(teacher_file)
teacher = teacher.to(device).eval().requires_grad_(False)
mean, std = meta["mean"], meta["std"]
test = zskt.TestSet(*zskt.load_dataset("shapes", "test"), mean, std)
classes = test.classes
print(f"teacher {zskt_models.infer_arch(teacher.state_dict())[0]}: "
      f"{zskt.accuracy(teacher, test):.2%} test accuracy on {len(test.labels)} images")

# %% [markdown]
# ## 2. Why not simply match the teacher on noise?
#
# The paper's Appendix 2: images of uniform noise are classified as one or two classes by every
# teacher it tried, so a student trained on noise would learn little about the others. The same
# happens here (`zskt.predict`: the teacher's class for each uint8 image).

# %%
seeded = torch.Generator().manual_seed(0)
noise = torch.randint(0, 256, (1000, 3, 16, 16), dtype=torch.uint8, generator=seeded)
counts = torch.bincount(zskt.predict(teacher, noise, mean, std), minlength=len(classes))
print("the teacher's classes on 1000 noise images:",
      {c: int(n) for c, n in zip(classes, counts) if n})

# %% [markdown]
# ## 3. Algorithm 1: a generator that hunts for disagreement, a student that catches up
#
# Section 3.1. The generator G(z) makes pseudo images and is trained to *maximise*
# KL(teacher || student) on them (`zskt.generator_loss`, L_G = -KL); the student minimises the
# same KL plus the attention term of Eq. 1 (`zskt.student_loss`, beta = 250). One outer iteration
# (`zskt.zero_shot_iteration`) takes n_G = 1 generator step and then n_S student steps on the
# updated generator's pseudo batch; `zskt.algorithm_1` runs the outer loop and anneals both
# learning rates, yielding after every iteration. The demo's settings (`zskt.make_config("shapes")`)
# differ from the paper's where docs/settings.md says why: 750 iterations, batch 64, n_S = 20.
# Here we run 300 iterations (a few minutes on a CPU); `zskt_run.train_zero_shot` does the same with
# checkpoints, logs and plots.

# %%
cfg = zskt.make_config("shapes", iterations=4 if QUICK else 300)
torch.manual_seed(cfg.seed)
student = zskt.wrn(cfg.student, len(classes)).to(device, memory_format=torch.channels_last)
generator = zskt.Generator(cfg.z_dim, image_size=test.images.shape[-1])
generator = generator.to(device, memory_format=torch.channels_last)
opts = zskt.optimizers(student, generator, cfg)  # Adam, cosine-annealed to 0
teacher_pred = zskt.predict(teacher, test.images, mean, std)
history = []
for it, out in zskt.algorithm_1(teacher, student, generator, opts, cfg):
    if it % 25 == 0 or it == cfg.iterations:
        pred = zskt.predict(student, test.images, mean, std)  # the test set never trains
        accuracy = (pred == test.labels).float().mean().item()
        agreement = (pred == teacher_pred).float().mean().item()
        t_conf = out["teacher_probs"].amax(1).mean().item()
        s_conf = out["student_probs"].amax(1).mean().item()
        history.append((it, accuracy, agreement, t_conf, s_conf))
        print(f"iteration {it}: student {accuracy:.2%}, agrees with the teacher on "
              f"{agreement:.2%}; top-class probability on the pseudo batch: teacher {t_conf:.2f}, "
              f"student {s_conf:.2f}")

# %%
its, acc, agree, t_conf, s_conf = zip(*history)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(its, acc, label="student test accuracy")
left.plot(its, agree, label="agreement with the teacher")
left.set(xlabel="iteration", ylim=(0, 1), title="on the test images")
right.plot(its, t_conf, label="teacher")
right.plot(its, s_conf, label="student")
right.set(xlabel="iteration", ylim=(0, 1), title="top-class probability on pseudo images")
left.legend()
right.legend()
fig.tight_layout()  # keeps the axis labels inside the picture
fig.savefig(OUT / "history.png")

# %% [markdown]
# The student learns the teacher's test-set answers without seeing one real image. Section 4.3 of
# the paper reports the teacher confident (top-class probability about 0.8) and the student not
# (about 0.3) on the pseudo images: the generator keeps moving to where they disagree.
#
# ## 4. What the generator draws
#
# Each pseudo image with the class the teacher sees in it (`zskt_plots.show_samples`). They look
# nothing like shapes, yet they carry the teacher's decision boundaries (Figure 3 of the paper
# shows the same for CIFAR-10).

# %%
zskt_plots.show_samples(generator, teacher, mean, std, classes).savefig(OUT / "samples.png")

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
    # quick: M = 100, so 20 epochs instead of 200
    quick = ["--epochs", "1", "--max-steps", "3", "--samples-per-class", "100"] if QUICK else []
    train_teacher.main(["--arch", "wrn-16-1", "--samples-per-class", "10", "--distill-from",
                        str(teacher_file), "--out", str(kd_dir), "--overwrite", *quick])
kd_student = zskt_models.load_model(kd_dir / "model.pt")[0].to(device)
panels = []
for name, stepped in (("zero-shot", student), ("KD+AT, M = 10", kd_student)):
    x, labels, _ = zskt.agreeing_images(stepped, teacher, test, n=10 if QUICK else 100)
    p_stepped, p_teacher = zskt.transition_curves(stepped, teacher, x, steps=3 if QUICK else 30,
                                                  labels=labels)
    panels.append((name, p_stepped, p_teacher))
    print(f"{name}: test accuracy {zskt.accuracy(stepped, test):.2%}, "
          f"MTE {zskt.mean_transition_error(p_stepped, p_teacher):.3f} on {len(x)} images")
zskt_plots.plot_transition_curves(panels).savefig(OUT / "transition.png")

# %% [markdown]
# As in the paper's Table 2 and Figure 4, the zero-shot student follows its teacher across the
# decision boundaries far more closely (a lower MTE) than the student that saw real images. Next:
# `docs/exercises.md`, and `python toy.py` for the paper's 2-D picture of why (Figure 1).
