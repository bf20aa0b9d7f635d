"""Reproduce the paper's Table 1, Table 2 and Figure 2 (Micaelli & Storkey, NeurIPS 2019, arXiv
1905.09768 v3), and a CIFAR-100 table beyond the paper, from one command: a companion of zskt.py
and train_teacher.py, which do the work.

    python reproduce.py table1 --list                # the runs, one command a line, in order
    python reproduce.py table1                       # run what is missing, resume what stopped
    python reproduce.py all --report                 # only the report of the runs found so far
    python reproduce.py all --scale tiny             # the same plans on the built-in shapes data
    python reproduce.py cifar100 --teachers checkpoints/pretrained   # the literature's teachers

A plan is a list of runs, each one command of train_teacher.py or zskt.py with its own run
directory under --results, in dependency order (teachers first); runs shared between plans run
once. Finished runs are skipped and stopped ones resumed through each script's own --resume, so
the command can be repeated after a crash, a kill or a reboot; --list hands the commands to any
scheduler instead (SLURM, GNU parallel, a cloud queue).
"""
import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import train_teacher
import zskt_run
from zskt_plots import pyplot
from zskt_utils import (Stopped, UserError, format_time, over_seeds, run_cli, shell_command,
                        write_json)

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------------------
# The paper's numbers, each with its table or figure (arXiv 1905.09768 v3).

PAIRS = [("wrn-16-2", "wrn-16-1"), ("wrn-40-1", "wrn-16-1"), ("wrn-40-2", "wrn-16-1"),
         ("wrn-40-1", "wrn-16-2"), ("wrn-40-2", "wrn-16-2"), ("wrn-40-2", "wrn-40-1")]
# Table 1, CIFAR-10: teacher scratch, student scratch, KD+AT M = 200, ours M = 0 (mean, std)
PAPER_TABLE1 = {
    PAIRS[0]: ((93.97, .11), (91.04, .04), (84.54, .21), (82.44, .21)),
    PAIRS[1]: ((93.18, .08), (91.04, .04), (81.71, .25), (79.93, 1.11)),
    PAIRS[2]: ((94.73, .02), (91.04, .04), (81.25, .67), (83.69, .58)),
    PAIRS[3]: ((93.18, .08), (93.97, .11), (85.74, .47), (86.60, .56)),
    PAIRS[4]: ((94.73, .02), (93.97, .11), (86.39, .33), (89.71, .10)),
    PAIRS[5]: ((94.73, .02), (93.18, .08), (87.35, .12), (86.60, 1.79))}
# Table 2: MTE of the zero-shot and the KD+AT student (K = 100, xi = 1)
PAPER_TABLE2 = {"svhn": (0.09, 0.64), "cifar10": (0.22, 0.68)}
M_VALUES = (0, 10, 25, 50, 75, 100)
PAPER_FIGURE2 = {  # Figure 2, WRN-40-2 -> WRN-16-1, as the author's accuracy_plots.ipynb plots it
    "svhn": {"no teacher": (10, 10.88, 19.71, 54.83, 64.26, 73.18),
             "KD+AT": (10, 24.57, 40.25, 54.03, 69.69, 77.72),
             "zero-shot + M": (94.37, 94.36, 94.37, 94.35, 94.38, 94.41)},
    "cifar10": {"no teacher": (10, 25.79, 33.5, 44.88, 55.62, 58.80),
                "KD+AT": (10, 40.32, 57, 68, 72, 76),
                "zero-shot + M": (83.69, 84.68, 84.71, 85.28, 85.75, 85.91)}}
FULL_DATA_KDAT = {"svhn": 95.88, "cifar10": 91.92}  # Figure 2's lines: KD+AT with all images

# Beyond the paper: the pairs of the data-free distillation literature's CIFAR-100 table, the
# file names of its shared teachers (zju-vipa/CMI), and the "ZSKT" rows of two READMEs, which
# come from a re-implementation with another protocol (docs/later-papers.md says how it differs).
LITERATURE_PAIRS = [("resnet34", "resnet18"), ("vgg11", "resnet18"), ("wrn-40-2", "wrn-16-1"),
                    ("wrn-40-2", "wrn-40-1"), ("wrn-40-2", "wrn-16-2")]
LITERATURE_FILES = {"resnet34": "resnet34", "vgg11": "vgg11", "wrn-40-2": "wrn40_2"}
LITERATURE_ZSKT = {  # CIFAR-100, best test accuracy over training, per pair above
    "zju-vipa/CMI README.md": (67.74, 34.72, 30.15, 29.73, 28.44),
    "zju-vipa/Fast-Datafree README.md": (67.74, 54.31, 36.66, 53.60, 54.59)}
LITERATURE_TEACHERS = {"resnet34": 78.05, "vgg11": 71.32, "wrn-40-2": 75.83}  # CIFAR-100, CMI

# Scales: the paper's, and one that runs every plan on shapes on a CPU (3 hours of one-thread
# run time, measured). "smoke" (for the tests) is tiny with every run cut to a few steps.
SCALES = {
    "paper": dict(datasets=("cifar10", "svhn"), wide="cifar100", seeds=(0, 1, 2), teacher=[],
                  zero_shot=[], kdat_m=200, mte=["--images", "1000", "--steps", "100"]),
    "tiny": dict(datasets=("shapes",), wide="shapes", seeds=(0, 1, 2), teacher=["--epochs", "2"],
                 zero_shot=["--iterations", "100", "--log-every", "25", "--mte-images", "100",
                            "--mte-steps", "30"], kdat_m=200, mte=["--images", "100", "--steps",
                                                                   "30"]),
    "smoke": dict(datasets=("shapes",), wide="shapes", seeds=(0,),
                  teacher=["--epochs", "1", "--max-steps", "1", "--batch-size", "8"],
                  zero_shot=["--iterations", "2", "--batch-size", "4", "--n-s", "1",
                             "--log-every", "2", "--mte-images", "2", "--mte-steps", "2"],
                  kdat_m=200, mte=["--images", "2", "--steps", "2"]),
}
PLANS = ("table1", "table2", "figure2", "cifar100", "all")


# ----------------------------------------------------------------------------------------------
# Plans: lists of runs.

@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a plan: a command of train_teacher.py, zskt.py or `zskt.py curves`, with its
    own directory under --results/runs/<name>, after the runs it needs (`deps`)."""
    name: str
    script: str
    args: tuple  # flags besides --out
    deps: tuple = ()

    def done_file(self):
        return {"train_teacher.py": "model.pt", "zskt.py": "summary.json",
                "zskt.py curves": "mte.json"}[self.script]


class Planner:
    """Builds the runs of the plans at one scale; a run asked for twice is planned once."""

    def __init__(self, scale, teachers=None):
        self.s, self.runs, self.teachers = SCALES[scale], {}, teachers

    def add(self, run):
        return self.runs.setdefault(run.name, run)

    def scratch(self, ds, arch, seed, m=-1):
        name = f"{ds}/scratch-{arch}" + (f"-m{m}" if m != -1 else "") + f"-seed{seed}"
        return self.add(Run(name, "train_teacher.py", ("--dataset", ds, "--arch", arch, "--seed",
                                                       str(seed), "--samples-per-class", str(m),
                                                       *self.s["teacher"])))

    def teacher(self, ds, arch):
        """(the teacher's file, the runs it needs): the seed-0 scratch run, or a given file."""
        if self.teachers and arch in LITERATURE_FILES:
            return str(Path(self.teachers).resolve() / f"{ds}_{LITERATURE_FILES[arch]}.pth"), ()
        run = self.scratch(ds, arch, 0)
        return model_file(run), (run.name,)

    def kdat(self, ds, t, st, m, seed):
        path, deps = self.teacher(ds, t)
        return self.add(Run(f"{ds}/kdat-{t}-{st}-m{m}-seed{seed}", "train_teacher.py",
                            ("--dataset", ds, "--arch", st, "--seed", str(seed),
                             "--samples-per-class", str(m), "--distill-from", path,
                             *self.s["teacher"]), deps))

    def zero_shot(self, ds, t, st, seed):
        path, deps = self.teacher(ds, t)
        return self.add(Run(f"{ds}/zeroshot-{t}-{st}-seed{seed}", "zskt.py",
                            ("--dataset", ds, "--teacher-checkpoint", path, "--student", st,
                             "--seed", str(seed), *self.s["zero_shot"]), deps))

    def finetune(self, ds, t, st, m, seed):
        start = self.zero_shot(ds, t, st, seed)
        return self.add(Run(f"{ds}/finetune-{t}-{st}-m{m}-seed{seed}", "train_teacher.py",
                            ("--dataset", ds, "--arch", st, "--seed", str(seed),
                             "--samples-per-class", str(m), "--finetune-from", model_file(start),
                             *self.s["teacher"]), (start.name,)))

    def curves(self, ds):
        zs = self.zero_shot(ds, "wrn-40-2", "wrn-16-1", 0)
        kd = self.kdat(ds, "wrn-40-2", "wrn-16-1", self.s["kdat_m"], 0)
        path, deps = self.teacher(ds, "wrn-40-2")
        return self.add(Run(f"{ds}/mte", "zskt.py curves",
                            ("--teacher-checkpoint", path, "--student-checkpoint",
                             model_file(zs), model_file(kd), "--names", "zero-shot", "KD+AT",
                             *self.s["mte"]), (zs.name, kd.name, *deps)))


def model_file(run):
    folder = f"{{results}}/runs/{run.name}/"
    return folder + ("model.pt" if run.script == "train_teacher.py" else "student.pt")


def runs_of(plan, scale, teachers=None):
    """The runs of one plan, dependencies first. Teachers are trained from scratch with seed 0
    unless a table needs other seeds of them (or --teachers gives files); every distillation
    uses the seed-0 teacher."""
    p, s = Planner(scale, teachers), SCALES[scale]
    if plan in ("table1", "all"):
        ds = s["datasets"][0]  # CIFAR-10
        for seed in s["seeds"]:
            for arch in sorted({a for pair in PAIRS for a in pair}):
                p.scratch(ds, arch, seed)
        for t, st in PAIRS:
            for seed in s["seeds"]:
                p.kdat(ds, t, st, s["kdat_m"], seed)
                p.zero_shot(ds, t, st, seed)
    if plan in ("table2", "all"):
        for ds in s["datasets"]:
            p.curves(ds)
    if plan in ("figure2", "all"):
        for ds in s["datasets"]:
            for seed in s["seeds"]:
                p.zero_shot(ds, "wrn-40-2", "wrn-16-1", seed)
                for m in M_VALUES[1:]:
                    p.scratch(ds, "wrn-16-1", seed, m)
                    p.kdat(ds, "wrn-40-2", "wrn-16-1", m, seed)
                    p.finetune(ds, "wrn-40-2", "wrn-16-1", m, seed)
    if plan == "cifar100":  # beyond the paper, so not part of "all"
        for t, st in LITERATURE_PAIRS:
            for seed in s["seeds"]:
                p.zero_shot(s["wide"], t, st, seed)
    return order(list(p.runs.values()))


def order(runs):
    """Dependencies before the runs that read them; otherwise the plan's own order."""
    done, out, by_name = set(), [], {r.name: r for r in runs}

    def visit(run):
        if run.name not in done:
            for dep in run.deps:
                visit(by_name[dep])
            done.add(run.name)
            out.append(run)
    for run in runs:
        visit(run)
    return out


def run_dir(run, results):
    return Path(results).resolve() / "runs" / run.name


def argv(run, results, data_dir):
    """(script, arguments) of a run's command. Run again, it continues the run: train_teacher.py
    and zskt.py resume it (--start-or-resume, and a finished one is left as it is); `zskt.py
    curves` starts an interrupted --out again by itself, and run_command skips a finished one."""
    res = str(Path(results).resolve())
    script, *sub = run.script.split()
    again = [] if run.script == "zskt.py curves" else ["--start-or-resume"]
    args = [a.replace("{results}", res) for a in run.args]
    return script, [*sub, *args, "--data-dir", str(Path(data_dir).resolve()), "--out",
                    str(run_dir(run, results)), *again]


def run_command(run, results, data_dir):
    """The shell command of a run: this interpreter and absolute paths, so that it works from
    any directory and any POSIX shell. Run twice, it does no work twice: a curves run whose
    result file exists is skipped by a test in the line itself (`zskt.py curves` refuses a
    finished --out), as the other scripts skip their finished runs."""
    script, args = argv(run, results, data_dir)
    command = shell_command(script, *args)
    if run.script != "zskt.py curves":
        return command
    folder = run_dir(run, results)
    done, name = shlex.quote(str(folder / run.done_file())), shlex.quote(str(folder))
    return f"if [ -f {done} ]; then echo {name} finished earlier; else {command}; fi"


def stages(runs):
    """1 + the deepest dependency: the runs of one stage can all run at once."""
    stage = {}
    for run in runs:  # dependencies come first
        stage[run.name] = 1 + max((stage[d] for d in run.deps), default=0)
    return stage


# ----------------------------------------------------------------------------------------------
# Running a plan: skip what is finished, resume what was stopped, start the rest.

def state(run, results):
    """'done', 'stopped' (its directory exists: the command resumes or restarts it) or 'missing'."""
    d = Path(results) / "runs" / run.name
    return "done" if (d / run.done_file()).is_file() else "stopped" if d.exists() else "missing"


def log_file(run, results):
    return Path(results) / "logs" / (run.name.replace("/", "__") + ".log")


def execute(run, results, data_dir, in_process=False, every=60.0):
    """Runs one command to its end, with this interpreter; returns None, or why it failed (the
    run's own error message where it printed one). Every `every` seconds it prints the run's
    latest progress line."""
    script, args = argv(run, results, data_dir)
    log = log_file(run, results)
    log.parent.mkdir(parents=True, exist_ok=True)
    if in_process:  # the tests: the same functions, without a new interpreter per run
        main = train_teacher.main if script == "train_teacher.py" else zskt_run.main
        try:
            main(args)
        except (UserError, Stopped, SystemExit) as e:
            log.write_text(f"{run_command(run, results, data_dir)}\nerror: {e}\n")
            return f"error: {e}"
        return None
    with open(log, "a") as f:
        f.write(f"$ {run_command(run, results, data_dir)}\n")
        f.flush()
        p = subprocess.Popen(process(run, results, data_dir), stdout=f, stderr=subprocess.STDOUT)
        shown, last = time.time(), None
        while p.poll() is None:
            time.sleep(0.5)
            if time.time() - shown >= every and (line := progress_line(log)) != last:
                print(f"    {line}", flush=True)
                shown, last = time.time(), line
    return None if p.returncode == 0 else error_of(log) or f"exit status {p.returncode}"


def process(run, results, data_dir):
    """The argument list of a run's process: this interpreter, the script, its flags."""
    script, args = argv(run, results, data_dir)
    return [sys.executable, str(HERE / script), *args]


def tail(path, size=16_384):
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace").splitlines()


def progress_line(log):
    """The latest progress line of a run's log (its scripts print one a minute in a log file)."""
    lines = [line for line in tail(log) if "ETA" in line]
    return lines[-1] if lines else None


def error_of(log):
    """The one-sentence error a script printed last ('error: ...'), or None."""
    lines = [line for line in tail(log) if line.startswith("error: ")]
    return lines[-1] if lines else None


def check_results_dir(results, scale):
    """One results directory holds one scale: its runs would not compare with another's."""
    path = Path(results) / "reproduce.json"
    mine = {"scale": scale, "settings": SCALES[scale]}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != json.loads(json.dumps(mine)):
            raise UserError(f"{results} holds runs of scale {theirs.get('scale')!r} with other "
                            f"settings; pass another --results for scale {scale!r}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, mine)


def run_plan(runs, results, data_dir, in_process=False, stage=None, give_up_after=3):
    """Every run in order (of one stage only, if given); a failed or unfinished run blocks the
    runs that need it. When the first `give_up_after` runs tried all fail for the same reason,
    the rest would too: it stops there. Returns {name: why it failed}."""
    failed, tried, t0 = {}, [], time.time()
    by_name, stage_of = {r.name: r for r in runs}, stages(runs)
    runs = [r for r in runs if stage in (None, stage_of[r.name])]
    finished = [r for r in runs if state(r, results) == "done"]
    print(f"{len(runs)} runs, {len(finished)} finished earlier", flush=True)
    for i, run in enumerate(runs, 1):
        if state(run, results) == "done":
            continue
        blocked = [d for d in run.deps if d in failed or state(by_name[d], results) != "done"]
        if blocked:
            failed[run.name] = f"blocked: needs {', '.join(blocked)}"
            continue
        took = sum(seconds(r, results) for r in runs if state(r, results) == "done")
        print(f"[{i}/{len(runs)}] {run.name} ({state(run, results)}); finished runs took "
              f"{format_time(took)}, this invocation {format_time(time.time() - t0)}", flush=True)
        why = execute(run, results, data_dir, in_process)
        tried.append(why)
        if why:
            failed[run.name] = f"{why}; log: {log_file(run, results)}"
            print(f"  failed: {failed[run.name]}", flush=True)
        if len(tried) >= give_up_after and len(set(tried)) == 1 and tried[0]:
            raise UserError(f"the first {len(tried)} runs all failed with the same error, so the "
                            f"rest would too: {tried[0].removeprefix('error: ')} (logs in "
                            f"{Path(results) / 'logs'})")
    return failed


# ----------------------------------------------------------------------------------------------
# Reports: the paper's number next to ours; a missing run shows as missing, never as a number.

def summary(results, name):
    for file in ("summary.json", "mte.json"):
        path = Path(results) / "runs" / name / file
        if path.is_file():
            return json.loads(path.read_text())
    return None


def seconds(run, results):
    return (summary(results, run.name) or {}).get("seconds") or 0.0


def run_accuracy(results, name):
    """Test accuracy (%) at the end of a finished run, or None."""
    s = summary(results, name)
    return None if s is None else 100 * s.get("student_test_acc", s.get("test_acc"))


def best_accuracy(results, name):
    """The best test accuracy (%) a zero-shot run logged during training (metrics.csv), or None
    for an unfinished run: the number the later literature reports."""
    path = Path(results) / "runs" / name / "metrics.csv"
    if summary(results, name) is None or not path.is_file():
        return None
    return 100 * max(float(row["student_test_acc"]) for row in zskt_run.read_rows(path))


def seed_stats(values):
    """(mean, population std, seeds) of the runs found, or None when there is none."""
    m = over_seeds(values)
    return (m["mean"], m["std"], m["n"]) if m["n"] else None


def cell(stat):
    return "missing" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def diff(ours, paper):
    return "" if ours is None or paper is None else f"{ours[0] - paper:+.2f}"


def compute_line(runs, results):
    done = [r for r in runs if state(r, results) == "done"]
    devices = sorted({(summary(results, r.name) or {}).get("device_name") or "?" for r in done})
    hours = sum(seconds(r, results) for r in done) / 3600
    return (f"{len(done)} of {len(runs)} runs finished; their measured time adds up to "
            f"{hours:.2f} hours on {', '.join(devices) or 'no device yet'}.")


def header(title, scale, runs, results):
    note = ("" if scale == "paper" else f" At scale {scale!r} every run is on the built-in "
            f"`shapes` data with shortened settings, so the published numbers are context, not "
            f"targets.")
    return [f"# {title}", "", f"Scale {scale!r}; results in `{results}`.{note} "
            f"{compute_line(runs, results)}", ""]


def report_table1(results, scale):
    runs, ds, seeds = runs_of("table1", scale), SCALES[scale]["datasets"][0], SCALES[scale]["seeds"]
    m = SCALES[scale]["kdat_m"]

    def acc(prefix):
        return seed_stats([run_accuracy(results, f"{ds}/{prefix}-seed{s}") for s in seeds])
    lines = header("Table 1: architecture dependence (CIFAR-10 in the paper)", scale, runs, results)
    lines += ["| teacher → student | | paper | ours (mean ± std) | seeds | ours − paper |",
              "|---|---|---|---|---|---|"]
    for (t, st), paper in PAPER_TABLE1.items():
        ours = [acc(f"scratch-{t}"), acc(f"scratch-{st}"), acc(f"kdat-{t}-{st}-m{m}"),
                acc(f"zeroshot-{t}-{st}")]
        whats = ("teacher scratch", "student scratch", f"KD+AT, M = {m}", "zero-shot (ours), M = 0")
        for what, o, (p, p_std) in zip(whats, ours, paper):
            lines.append(f"| {t.upper()} → {st.upper()} | {what} | {p:.2f} ± {p_std:.2f} | "
                         f"{cell(o)} | {0 if o is None else o[2]} | {diff(o, p)} |")
    return "\n".join(lines) + "\n"


def report_table2(results, scale):
    runs = runs_of("table2", scale)
    lines = header("Table 2: Mean Transition Error, WRN-40-2 teacher, WRN-16-1 students", scale,
                   runs, results)
    lines += ["| dataset | zero-shot: paper | zero-shot: ours | KD+AT: paper | KD+AT: ours | N |",
              "|---|---|---|---|---|---|"]
    for ds in SCALES[scale]["datasets"]:
        found = summary(results, f"{ds}/mte") or {}
        mte, images = found.get("mte", {}), found.get("images", {})
        paper = PAPER_TABLE2.get(ds, PAPER_TABLE2["cifar10"])

        def show(v):
            return "missing" if v is None else f"{v:.3f}"
        n = " / ".join(str(images[k]) for k in ("zero-shot", "KD+AT") if k in images) or "missing"
        lines.append(f"| {ds} | {paper[0]:.2f} | {show(mte.get('zero-shot'))} | {paper[1]:.2f} | "
                     f"{show(mte.get('KD+AT'))} | {n} |")
    lines += ["", f"KD+AT students: M = {SCALES[scale]['kdat_m']} images per class (the paper does "
              f"not say which M its Table 2 used; this is Table 1's). Transition curves: "
              f"{' '.join(SCALES[scale]['mte'])}, xi = 1, targets skip the true label as the "
              f"author's code; N: the images both networks agreed on."]
    return "\n".join(lines) + "\n"


def figure2_data(results, scale, ds):
    """Per curve, (mean, std, seeds) or None at each M. At M = 0 the curves without a zero-shot
    start are chance, as the paper plots them, where the curve has any run at all."""
    seeds = SCALES[scale]["seeds"]

    def get(fmt):
        return [seed_stats([run_accuracy(results, f"{ds}/{fmt.format(m=m)}-seed{s}")
                            for s in seeds]) for m in M_VALUES]
    curves = {"no teacher": get("scratch-wrn-16-1-m{m}"),
              "KD+AT": get("kdat-wrn-40-2-wrn-16-1-m{m}"),
              "zero-shot + M": get("finetune-wrn-40-2-wrn-16-1-m{m}")}
    curves["zero-shot + M"][0] = seed_stats([run_accuracy(
        results, f"{ds}/zeroshot-wrn-40-2-wrn-16-1-seed{s}") for s in seeds])
    for name in ("no teacher", "KD+AT"):
        if any(curves[name][1:]):
            curves[name][0] = (10.0, 0.0, 0)  # no image, no training: chance
    return curves


def figure2_cell(stat):
    return "chance" if stat is not None and stat[2] == 0 else cell(stat)


def report_figure2(results, scale, path=None):
    runs = runs_of("figure2", scale)
    lines = header("Figure 2: accuracy against M images per class, WRN-40-2 → WRN-16-1", scale,
                   runs, results)
    plt = pyplot()
    datasets = SCALES[scale]["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        curves = figure2_data(results, scale, ds)
        paper = PAPER_FIGURE2.get(ds, PAPER_FIGURE2["cifar10"])
        lines += [f"## {ds}", "", "| M | " + " | ".join(f"{n}: paper | {n}: ours" for n in curves)
                  + " |", "|---|" + "---|---|" * len(curves)]
        for i, m in enumerate(M_VALUES):
            cells = [f"{paper[n][i]:.2f} | {figure2_cell(curves[n][i])}" for n in curves]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        plot_figure2_panel(ax, ds, scale, curves, paper)
    fig.tight_layout()
    fig.savefig(path or Path(results) / "figure2.png", dpi=100)
    plt.close(fig)
    return "\n".join(lines) + "\n"


def plot_figure2_panel(ax, ds, scale, curves, paper):
    """Ours solid with +-std bands (only the points measured), the paper's dashed."""
    for (name, points), color in zip(curves.items(), ("tab:gray", "tab:blue", "tab:red")):
        known = [(m, p) for m, p in zip(M_VALUES, points) if p is not None]
        if known:
            xs, ys, err = zip(*[(m, p[0], p[1]) for m, p in known])
            ax.plot(xs, ys, "-o", color=color, label=f"{name} (ours)")
            ax.fill_between(xs, np.subtract(ys, err), np.add(ys, err), color=color, alpha=.2)
        ax.plot(M_VALUES, paper[name], "--", color=color, alpha=.7, label=f"{name} (paper)")
    ax.axhline(FULL_DATA_KDAT.get(ds, FULL_DATA_KDAT["cifar10"]), color="k", lw=.8, ls=":",
               label="KD+AT, all images (paper)")
    ax.set(title=f"{ds} (scale {scale})", xlabel="M, images per class",
           ylabel="test accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=7)


def report_cifar100(results, scale, teachers=None):
    runs = runs_of("cifar100", scale, teachers)
    ds, seeds = SCALES[scale]["wide"], SCALES[scale]["seeds"]
    lines = header("CIFAR-100 beyond the paper: zero-shot KT with the paper's method on the "
                   "literature's teachers", scale, runs, results)
    source = f"the files in `{teachers}`" if teachers else "train_teacher.py (the paper's recipe)"
    lines += [f"Teachers: {source}. Ours: Algorithm 1 with the paper's settings, the student's "
              f"test accuracy at the end of training (the paper's protocol), and the best over "
              f"its log steps (the later literature's). Theirs: the \"ZSKT\" rows of two READMEs, "
              f"a re-implementation without the attention term, with a per-example KL, a Sigmoid "
              f"generator and 16k generator / 80k student steps, best accuracy over training "
              f"(docs/later-papers.md).", "",
              "| teacher → student | teacher (ours) | ours: final | ours: best | seeds | "
              + " | ".join(f"{k.split()[0]}" for k in LITERATURE_ZSKT) + " |",
              "|---|---|---|---|---|" + "---|" * len(LITERATURE_ZSKT)]
    for i, (t, st) in enumerate(LITERATURE_PAIRS):
        names = [f"{ds}/zeroshot-{t}-{st}-seed{s}" for s in seeds]
        final = seed_stats([run_accuracy(results, n) for n in names])
        best = seed_stats([best_accuracy(results, n) for n in names])
        teacher = [summary(results, n) for n in names]
        t_acc = next((100 * x["teacher_test_acc"] for x in teacher if x), None)
        t_cell = "missing" if t_acc is None else f"{t_acc:.2f}"
        lines.append(f"| {t} → {st} | {t_cell} | {cell(final)} | {cell(best)} | "
                     f"{0 if final is None else final[2]} | "
                     + " | ".join(f"{v[i]:.2f}" for v in LITERATURE_ZSKT.values()) + " |")
    lines += ["", "The literature's teachers on CIFAR-100 (CMI README): " + ", ".join(
        f"{k} {v:.2f}" for k, v in LITERATURE_TEACHERS.items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(plan, results, scale, teachers=None):
    written = []
    reports = {"table1": report_table1, "table2": report_table2, "figure2": report_figure2,
               "cifar100": lambda r, s: report_cifar100(r, s, teachers)}
    for name, fn in reports.items():
        if plan == name or (plan == "all" and name != "cifar100"):
            (Path(results) / f"{name}.md").write_text(fn(results, scale))
            written += [f"{name}.md"] + (["figure2.png"] if name == "figure2" else [])
    print(f"report: {', '.join(str(Path(results) / w) for w in written)}")


# ----------------------------------------------------------------------------------------------
# Command line.

def list_runs(runs, results, data_dir, only_stage, title):
    stage, index = stages(runs), {r.name: i for i, r in enumerate(runs, 1)}
    print(f"# {len(runs)} runs of {title}; [n] numbers the lines, 'after' names the lines a run "
          f"needs; a stage's runs can all run at once once the earlier stages finished")
    for run in runs:
        if only_stage in (None, stage[run.name]):
            after = ", ".join(str(index[d]) for d in run.deps)
            print(f"{run_command(run, results, data_dir)}  # [{index[run.name]}] stage "
                  f"{stage[run.name]}" + (f", after {after}" if after else ""))


def main(argv=None):
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", choices=PLANS, help="all: Table 1, Table 2 and Figure 2; cifar100 (not "
                   "in all): the literature's CIFAR-100 pairs")
    p.add_argument("--scale", choices=("paper", "tiny"), default="paper",
                   help="paper: the paper's datasets and settings; tiny: the same plans on shapes")
    p.add_argument("--results", help="where the runs and the report go (default results/<scale>)")
    p.add_argument("--data-dir", default="./data", help="where the datasets are, or are "
                   "downloaded to (./data)")
    p.add_argument("--teachers", help="a folder of the literature's shared teachers "
                   "(<dataset>_resnet34.pth, _vgg11.pth, _wrn40_2.pth) to distil from instead of "
                   "training the teachers")
    p.add_argument("--list", action="store_true", help="print the commands, one a line, and exit")
    p.add_argument("--stage", type=int, help="only the runs of this stage (all runs of a stage "
                   "can run at once), with --list or when running")
    p.add_argument("--report", action="store_true", help="only write the report of the runs found")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny, cut short
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests
    args = p.parse_args(argv)
    scale = "smoke" if args.smoke else args.scale
    results = Path(args.results or f"results/{scale}").resolve()
    runs = runs_of(args.plan, scale, args.teachers)
    if args.stage is not None and args.stage not in stages(runs).values():
        raise UserError(f"--stage {args.stage}: the plan {args.plan} has stages "
                        f"1..{max(stages(runs).values())}")
    if args.list:
        return list_runs(runs, results, args.data_dir, args.stage, f"{args.plan} at scale {scale}")
    check_results_dir(results, scale)
    failed = {} if args.report else run_plan(runs, results, args.data_dir, args.in_process,
                                             args.stage)
    write_report(args.plan, results, scale, args.teachers)
    if failed:
        shown = "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise UserError(f"{len(failed)} runs did not finish: {shown}{more}")


if __name__ == "__main__":
    run_cli(main)
