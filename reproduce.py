"""Reproduce the paper's Table 1, Table 2 and Figure 2 (Micaelli & Storkey, NeurIPS 2019, arXiv
1905.09768 v3) from one command: a companion of zskt.py and train_teacher.py, which do the work.

    python reproduce.py table1 --list                # the runs, one command a line, in dependency order
    python reproduce.py table1                       # run what is missing, resume what was stopped, report
    python reproduce.py all --report                 # only the report: results/paper/table1.md, table2.md, figure2.png
    python reproduce.py all --scale tiny             # the same plans on the built-in shapes data, on a CPU

A plan is a list of runs, each one command of train_teacher.py or zskt.py with its own run
directory under --results, in dependency order (teachers first); runs shared between plans run
once. Finished runs are skipped and stopped ones resumed through each script's own --resume, so the
command can be repeated after a crash, a kill or a reboot; --list hands the commands to any
scheduler instead (SLURM, GNU parallel, a cloud queue).
"""
import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import zskt
from zskt_utils import format_time, pyplot

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------------------------
# The paper's numbers, each with its table or figure (arXiv 1905.09768 v3).

PAIRS = [("wrn-16-2", "wrn-16-1"), ("wrn-40-1", "wrn-16-1"), ("wrn-40-2", "wrn-16-1"),
         ("wrn-40-1", "wrn-16-2"), ("wrn-40-2", "wrn-16-2"), ("wrn-40-2", "wrn-40-1")]
PAPER_TABLE1 = {  # Table 1, CIFAR-10: teacher scratch, student scratch, KD+AT M = 200, ours M = 0 (mean, std, 3 seeds)
    PAIRS[0]: ((93.97, .11), (91.04, .04), (84.54, .21), (82.44, .21)),
    PAIRS[1]: ((93.18, .08), (91.04, .04), (81.71, .25), (79.93, 1.11)),
    PAIRS[2]: ((94.73, .02), (91.04, .04), (81.25, .67), (83.69, .58)),
    PAIRS[3]: ((93.18, .08), (93.97, .11), (85.74, .47), (86.60, .56)),
    PAIRS[4]: ((94.73, .02), (93.97, .11), (86.39, .33), (89.71, .10)),
    PAIRS[5]: ((94.73, .02), (93.18, .08), (87.35, .12), (86.60, 1.79))}
PAPER_TABLE2 = {"svhn": (0.09, 0.64), "cifar10": (0.22, 0.68)}  # Table 2: MTE of zero-shot, KD+AT (K = 100, xi = 1)
M_VALUES = (0, 10, 25, 50, 75, 100)
PAPER_FIGURE2 = {  # Figure 2, WRN-40-2 -> WRN-16-1, as plotted by the author's notebooks/accuracy_plots.ipynb
    "svhn": {"no teacher": (10, 10.88, 19.71, 54.83, 64.26, 73.18), "KD+AT": (10, 24.57, 40.25, 54.03, 69.69, 77.72),
             "zero-shot + M": (94.37, 94.36, 94.37, 94.35, 94.38, 94.41)},
    "cifar10": {"no teacher": (10, 25.79, 33.5, 44.88, 55.62, 58.80), "KD+AT": (10, 40.32, 57, 68, 72, 76),
                "zero-shot + M": (83.69, 84.68, 84.71, 85.28, 85.75, 85.91)}}
FULL_DATA_KDAT = {"svhn": 95.88, "cifar10": 91.92}  # Figure 2's horizontal lines: KD+AT with all images

# Scales: the paper's, and one that runs every plan on shapes on a CPU (3 hours of one-thread run time,
# measured). "smoke" (for the tests) is tiny with every run cut to a few steps.
SCALES = {
    "paper": dict(datasets=("cifar10", "svhn"), seeds=(0, 1, 2), teacher=[], zero_shot=[], kdat_m=200,
                  mte=["--images", "1000", "--steps", "100"]),
    "tiny": dict(datasets=("shapes",), seeds=(0, 1, 2), teacher=["--epochs", "2"],
                 zero_shot=["--iterations", "100", "--log-every", "25", "--mte-images", "100", "--mte-steps", "30"],
                 kdat_m=200, mte=["--images", "100", "--steps", "30"]),
    "smoke": dict(datasets=("shapes",), seeds=(0,), teacher=["--epochs", "1", "--max-steps", "1", "--batch-size", "8"],
                  zero_shot=["--iterations", "2", "--batch-size", "4", "--n-s", "1", "--log-every", "2", "--mte-images",
                             "2", "--mte-steps", "2"], kdat_m=200, mte=["--images", "2", "--steps", "2"]),
}


# ----------------------------------------------------------------------------------------------
# Plans: lists of runs.

@dataclasses.dataclass(frozen=True)
class Run:
    name: str      # also its directory under --results/runs
    script: str    # train_teacher.py, zskt.py or "zskt.py curves"
    args: tuple    # flags besides --out
    deps: tuple = ()

    def done_file(self):
        return {"train_teacher.py": "model.pt", "zskt.py": "summary.json", "zskt.py curves": "mte.json"}[self.script]


def runs_of(plan, scale):
    """The runs of one plan, dependencies first. Teachers are trained from scratch with seed 0 unless
    a table needs other seeds of them; every distillation uses the seed-0 teacher."""
    s = SCALES[scale]
    runs = {}

    def add(run):
        runs.setdefault(run.name, run)
        return run

    def scratch(ds, arch, seed, m=-1):
        name = f"{ds}/scratch-{arch}" + (f"-m{m}" if m != -1 else "") + f"-seed{seed}"
        return add(Run(name, "train_teacher.py", ("--dataset", ds, "--arch", arch, "--seed", str(seed),
                                                  "--samples-per-class", str(m), *s["teacher"])))

    def model(run):
        return f"{{results}}/runs/{run.name}/" + ("model.pt" if run.script == "train_teacher.py" else "student.pt")

    def kdat(ds, t, st, m, seed):
        teacher = scratch(ds, t, 0)
        return add(Run(f"{ds}/kdat-{t}-{st}-m{m}-seed{seed}", "train_teacher.py",
                       ("--dataset", ds, "--arch", st, "--seed", str(seed), "--samples-per-class", str(m),
                        "--distill-from", model(teacher), *s["teacher"]), (teacher.name,)))

    def zero_shot(ds, t, st, seed):
        teacher = scratch(ds, t, 0)
        return add(Run(f"{ds}/zeroshot-{t}-{st}-seed{seed}", "zskt.py",
                       ("--dataset", ds, "--teacher-checkpoint", model(teacher), "--student", st, "--seed", str(seed),
                        *s["zero_shot"]), (teacher.name,)))

    def finetune(ds, t, st, m, seed):
        start = zero_shot(ds, t, st, seed)
        return add(Run(f"{ds}/finetune-{t}-{st}-m{m}-seed{seed}", "train_teacher.py",
                       ("--dataset", ds, "--arch", st, "--seed", str(seed), "--samples-per-class", str(m),
                        "--finetune-from", model(start), *s["teacher"]), (start.name,)))

    if plan in ("table1", "all"):
        ds = s["datasets"][0]  # CIFAR-10
        for seed in s["seeds"]:
            for arch in sorted({a for pair in PAIRS for a in pair}):
                scratch(ds, arch, seed)
        for t, st in PAIRS:
            for seed in s["seeds"]:
                kdat(ds, t, st, s["kdat_m"], seed)
                zero_shot(ds, t, st, seed)
    if plan in ("table2", "all"):
        for ds in s["datasets"]:
            zs, kd = zero_shot(ds, "wrn-40-2", "wrn-16-1", 0), kdat(ds, "wrn-40-2", "wrn-16-1", s["kdat_m"], 0)
            add(Run(f"{ds}/mte", "zskt.py curves", ("--teacher-checkpoint", model(scratch(ds, "wrn-40-2", 0)),
                                                     "--student-checkpoint", model(zs), model(kd),
                                                     "--names", "zero-shot", "KD+AT", *s["mte"]),
                    (zs.name, kd.name, f"{ds}/scratch-wrn-40-2-seed0")))
    if plan in ("figure2", "all"):
        for ds in s["datasets"]:
            for seed in s["seeds"]:
                zero_shot(ds, "wrn-40-2", "wrn-16-1", seed)
                for m in M_VALUES[1:]:
                    scratch(ds, "wrn-16-1", seed, m)
                    kdat(ds, "wrn-40-2", "wrn-16-1", m, seed)
                    finetune(ds, "wrn-40-2", "wrn-16-1", m, seed)
    return order(list(runs.values()))


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


def argv(run, results, data_dir):
    """(script, arguments) of a run's command. Run twice, it continues the first: train_teacher.py and
    zskt.py resume their run (--start-or-resume), the transition curves start again (a few minutes)."""
    out, res = Path(results).resolve() / "runs" / run.name, str(Path(results).resolve())
    script, *sub = run.script.split()
    again = "--overwrite" if run.script == "zskt.py curves" else "--start-or-resume"
    return script, [*sub, *(a.replace("{results}", res) for a in run.args), "--data-dir", str(Path(data_dir).resolve()),
                    "--out", str(out), again]


def command(run, results, data_dir):
    """The shell command of a run, with absolute paths, so it works from any directory."""
    script, args = argv(run, results, data_dir)
    return zskt.command(script, *args)


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


def execute(run, results, data_dir, in_process=False):
    """Runs one command to its end, with this interpreter; returns None, or the reason it failed."""
    script, args = argv(run, results, data_dir)
    log = Path(results) / "logs" / (run.name.replace("/", "__") + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    if in_process:  # the tests: the same functions, without a new interpreter per run
        import train_teacher
        try:
            (train_teacher.main if script == "train_teacher.py" else zskt.main)(args)
        except (zskt.UserError, zskt.Stopped, SystemExit) as e:
            log.write_text(f"{command(run, results, data_dir)}\n{type(e).__name__}: {e}\n")
            return f"{type(e).__name__}: {e}"
        return None
    with open(log, "a") as f:
        f.write(f"$ {command(run, results, data_dir)}\n")
        f.flush()
        code = subprocess.run([sys.executable, str(HERE / script), *args], stdout=f, stderr=subprocess.STDOUT).returncode
    return None if code == 0 else f"exit status {code}"


def check_results_dir(results, scale):
    """One results directory holds one scale: its runs would not compare with another's."""
    path = Path(results) / "reproduce.json"
    mine = {"scale": scale, "settings": SCALES[scale]}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != json.loads(json.dumps(mine)):
            raise zskt.UserError(f"{results} holds runs of scale {theirs.get('scale')!r} with other settings; "
                                 f"pass another --results for scale {scale!r}")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        zskt.write_json(path, mine)


def run_plan(runs, results, data_dir, in_process=False):
    """Every run in order; a failed run blocks the runs that need it. Returns {name: why it failed}."""
    failed, t0 = {}, time.time()
    finished = [r for r in runs if state(r, results) == "done"]
    print(f"{len(runs)} runs, {len(finished)} finished earlier", flush=True)
    for i, run in enumerate(runs, 1):
        if state(run, results) == "done":
            continue
        blocked = [d for d in run.deps if d in failed]
        if blocked:
            failed[run.name] = f"blocked: needs {', '.join(blocked)}"
            continue
        took = sum(seconds(r, results) for r in runs if state(r, results) == "done")
        print(f"[{i}/{len(runs)}] {run.name} ({state(run, results)}); finished runs took {format_time(took)}, "
              f"this session {format_time(time.time() - t0)}", flush=True)
        why = execute(run, results, data_dir, in_process)
        if why:
            failed[run.name] = f"{why}; log: {Path(results) / 'logs' / (run.name.replace('/', '__') + '.log')}"
            print(f"  failed: {failed[run.name]}", flush=True)
    return failed


# ----------------------------------------------------------------------------------------------
# Reports: the paper's number next to ours; a missing run shows as missing, never as zero.

def summary(results, name):
    for file in ("summary.json", "mte.json"):
        path = Path(results) / "runs" / name / file
        if path.is_file():
            return json.loads(path.read_text())
    return None


def seconds(run, results):
    return (summary(results, run.name) or {}).get("seconds") or 0.0


def accuracy(results, name):
    """Test accuracy (%) of a finished run, or None."""
    s = summary(results, name)
    return None if s is None else 100 * s.get("student_test_acc", s.get("test_acc"))


def mean_std(values):
    """(mean, population std, seeds) of the runs found, or None when there is none."""
    m = zskt.mean_std(values)
    return (m["mean"], m["std"], m["n"]) if m["n"] else None


def cell(stat):
    return "missing" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


def diff(ours, paper):
    return "" if ours is None or paper is None else f"{ours[0] - paper:+.2f}"


def compute_line(runs, results):
    done = [r for r in runs if state(r, results) == "done"]
    devices = sorted({(summary(results, r.name) or {}).get("device_name") or "?" for r in done})
    hours = sum(seconds(r, results) for r in done) / 3600
    return (f"{len(done)} of {len(runs)} runs finished; their measured time adds up to {hours:.2f} hours "
            f"on {', '.join(devices) or 'no device yet'}.")


def header(title, scale, runs, results):
    note = ("" if scale == "paper" else f" At scale {scale!r} every run is on the built-in `shapes` data with "
            f"shortened settings, so the paper's CIFAR-10/SVHN numbers are context, not targets.")
    return [f"# {title}", "", f"Scale {scale!r}; results in `{results}`.{note} {compute_line(runs, results)}", ""]


def report_table1(results, scale):
    runs, ds, seeds = runs_of("table1", scale), SCALES[scale]["datasets"][0], SCALES[scale]["seeds"]
    acc = lambda prefix: mean_std([accuracy(results, f"{ds}/{prefix}-seed{s}") for s in seeds])
    lines = header("Table 1: architecture dependence (CIFAR-10 in the paper)", scale, runs, results)
    lines += ["| teacher → student | | paper | ours (mean ± std) | seeds | ours − paper |", "|---|---|---|---|---|---|"]
    for (t, st), paper in PAPER_TABLE1.items():
        ours = [acc(f"scratch-{t}"), acc(f"scratch-{st}"), acc(f"kdat-{t}-{st}-m{SCALES[scale]['kdat_m']}"),
                acc(f"zeroshot-{t}-{st}")]
        for what, o, (p, p_std) in zip(("teacher scratch", "student scratch", f"KD+AT, M = {SCALES[scale]['kdat_m']}",
                                        "zero-shot (ours), M = 0"), ours, paper):
            lines.append(f"| {t.upper()} → {st.upper()} | {what} | {p:.2f} ± {p_std:.2f} | {cell(o)} | "
                         f"{0 if o is None else o[2]} | {diff(o, p)} |")
    return "\n".join(lines) + "\n"


def report_table2(results, scale):
    runs = runs_of("table2", scale)
    lines = header("Table 2: Mean Transition Error, WRN-40-2 teacher, WRN-16-1 students", scale, runs, results)
    lines += ["| dataset | zero-shot: paper | zero-shot: ours | KD+AT: paper | KD+AT: ours |", "|---|---|---|---|---|"]
    for ds in SCALES[scale]["datasets"]:
        mte = (summary(results, f"{ds}/mte") or {}).get("mte", {})
        paper = PAPER_TABLE2.get(ds, PAPER_TABLE2["cifar10"])
        show = lambda v: "missing" if v is None else f"{v:.3f}"
        lines.append(f"| {ds} | {paper[0]:.2f} | {show(mte.get('zero-shot'))} | {paper[1]:.2f} | {show(mte.get('KD+AT'))} |")
    lines += ["", f"KD+AT students: M = {SCALES[scale]['kdat_m']} images per class (the paper does not say which M its "
              f"Table 2 used; this is Table 1's). Transition curves: {' '.join(SCALES[scale]['mte'])}, xi = 1, "
              f"targets skip the true label as the author's code."]
    return "\n".join(lines) + "\n"


def figure2_data(results, scale, ds):
    seeds = SCALES[scale]["seeds"]
    get = lambda fmt: [mean_std([accuracy(results, f"{ds}/{fmt.format(m=m)}-seed{s}") for s in seeds]) for m in M_VALUES]
    curves = {"no teacher": get("scratch-wrn-16-1-m{m}"), "KD+AT": get("kdat-wrn-40-2-wrn-16-1-m{m}"),
              "zero-shot + M": get("finetune-wrn-40-2-wrn-16-1-m{m}")}
    curves["zero-shot + M"][0] = mean_std([accuracy(results, f"{ds}/zeroshot-wrn-40-2-wrn-16-1-seed{s}") for s in seeds])
    for name in ("no teacher", "KD+AT"):
        curves[name][0] = (10.0, 0.0, 0)  # no image, no training: chance, as the paper plots it
    return curves


def report_figure2(results, scale, path=None):
    runs = runs_of("figure2", scale)
    lines = header("Figure 2: accuracy against M images per class, WRN-40-2 → WRN-16-1", scale, runs, results)
    plt = pyplot()
    datasets = SCALES[scale]["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        curves, paper = figure2_data(results, scale, ds), PAPER_FIGURE2.get(ds, PAPER_FIGURE2["cifar10"])
        lines += [f"## {ds}", "", "| M | " + " | ".join(f"{n}: paper | {n}: ours" for n in curves) + " |",
                  "|---|" + "---|---|" * len(curves)]
        for i, m in enumerate(M_VALUES):
            lines.append(f"| {m} | " + " | ".join(f"{paper[n][i]:.2f} | {cell(curves[n][i])}" for n in curves) + " |")
        lines.append("")
        for (name, points), color in zip(curves.items(), ("tab:gray", "tab:blue", "tab:red")):
            known = [(m, p) for m, p in zip(M_VALUES, points) if p is not None]
            if known:
                xs, ys, err = zip(*[(m, p[0], p[1]) for m, p in known])
                ax.plot(xs, ys, "-o", color=color, label=f"{name} (ours)")
                ax.fill_between(xs, np.subtract(ys, err), np.add(ys, err), color=color, alpha=.2)
            ax.plot(M_VALUES, paper[name], "--", color=color, alpha=.7, label=f"{name} (paper)")
        ax.axhline(FULL_DATA_KDAT.get(ds, FULL_DATA_KDAT["cifar10"]), color="k", lw=.8, ls=":",
                   label="KD+AT, all images (paper)")
        ax.set(title=f"{ds} (scale {scale})", xlabel="M, images per class", ylabel="test accuracy (%)", ylim=(0, 100))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path or Path(results) / "figure2.png", dpi=100)
    plt.close(fig)
    return "\n".join(lines) + "\n"


def report(plan, results, scale):
    written = []
    for name, fn in (("table1", report_table1), ("table2", report_table2), ("figure2", report_figure2)):
        if plan in (name, "all"):
            (Path(results) / f"{name}.md").write_text(fn(results, scale))
            written += [f"{name}.md"] + (["figure2.png"] if name == "figure2" else [])
    print(f"report: {', '.join(str(Path(results) / w) for w in written)}")


# ----------------------------------------------------------------------------------------------
# Command line.

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", choices=("table1", "table2", "figure2", "all"))
    p.add_argument("--scale", choices=("paper", "tiny"), default="paper",
                   help="paper: CIFAR-10 and SVHN with the paper's settings; tiny: the same plans on shapes")
    p.add_argument("--results", help="where the runs and the report go (default results/<scale>)")
    p.add_argument("--data-dir", default="./data", help="where CIFAR-10 and SVHN are, or are downloaded to (./data)")
    p.add_argument("--list", action="store_true", help="print the commands, one a line, and exit")
    p.add_argument("--stage", type=int, help="with --list: only the runs of this stage (all of a stage can run at once)")
    p.add_argument("--report", action="store_true", help="only write the report of the runs found")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny plans, every run cut short
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no new interpreter per run
    args = p.parse_args(argv)
    scale = "smoke" if args.smoke else args.scale
    results = Path(args.results or f"results/{scale}").resolve()
    runs = runs_of(args.plan, scale)
    if args.list:
        stage, index = stages(runs), {r.name: i for i, r in enumerate(runs, 1)}
        print(f"# {len(runs)} runs of {args.plan} at scale {scale}; [n] numbers the lines, 'after' names the "
              f"lines a run needs; a stage's runs can all run at once once the earlier stages finished")
        for run in runs:
            if args.stage in (None, stage[run.name]):
                after = ", ".join(str(index[d]) for d in run.deps)
                print(f"{command(run, results, args.data_dir)}  # [{index[run.name]}] stage {stage[run.name]}"
                      + (f", after {after}" if after else ""))
        return
    check_results_dir(results, scale)
    failed = {} if args.report else run_plan(runs, results, args.data_dir, args.in_process)
    report(args.plan, results, scale)
    if failed:
        raise zskt.UserError(f"{len(failed)} runs did not finish: " + "; ".join(f"{k} ({v})" for k, v in failed.items()))


if __name__ == "__main__":
    zskt.run_cli(main)
