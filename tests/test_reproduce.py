"""Tests of reproduce.py: the plans, running them (skip, resume, survive a kill), the reports."""
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reproduce
import train_teacher as tt
from helpers import HERE, run_main


def listed(*args, in_process=True):
    """The commands `reproduce.py ... --list` prints; in_process=False runs it as a user does."""
    if in_process:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            reproduce.main([*args, "--list"])
        text = out.getvalue()
    else:
        r = subprocess.run([sys.executable, str(HERE / "reproduce.py"), *args, "--list"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        text = r.stdout
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_the_paper_plans_list_every_run_once_in_dependency_order(tmp_path):
    # Table 1: 4 architectures x 3 seeds from scratch, then 6 pairs x 3 seeds of KD+AT (M = 200)
    # and of zero-shot. Table 2: per dataset the WRN-40-2 teacher, a zero-shot and a KD+AT WRN-16-1
    # student, their curves. Figure 2: per dataset the teacher, 3 zero-shot seeds, and 5 M x 3
    # seeds of no teacher, KD+AT and fine-tuning. All: shared runs once: 48 + (1 + 4) + (45 + 47).
    counts = {"table1": 4 * 3 + 6 * 3 * 2, "table2": 2 * 4, "figure2": 2 * (1 + 3 + 5 * 3 * 3),
              "all": 48 + 5 + 45 + 47, "cifar100": 3 + 5 * 3}
    for plan, n in counts.items():
        lines = listed(plan, "--results", str(tmp_path / "r"))
        assert len(lines) == n, plan
        outs = [re.search(r"--out (\S+)", line)[1] for line in lines]
        assert len(set(outs)) == n  # every run its own directory
        for i, line in enumerate(lines, 1):
            found = re.search(r"# \[(\d+)\] stage (\d+)(?:, after (.*))?$", line)
            number, after = found.group(1, 3)
            assert int(number) == i and all(int(d) < i for d in (after or "").split(", ") if d)
    lines = listed("all", "--results", str(tmp_path / "r"), in_process=False)
    text = "\n".join(lines)
    teacher = tmp_path / "r" / "runs" / "cifar10" / "scratch-wrn-40-2-seed0" / "model.pt"
    assert "--distill-from " + str(teacher) in text
    assert text.count("zskt.py curves") == 2 and text.count("--finetune-from") == 30
    interpreter = f"{sys.executable} {HERE}/"  # this interpreter, for the curves after a test
    assert all(line.startswith(interpreter) or line.startswith("if [ -f ") and
               f"; else {interpreter}zskt.py curves " in line for line in lines)
    stage1 = listed("all", "--results", str(tmp_path / "r"), "--stage", "1")
    assert stage1 and all("train_teacher.py" in line and "--distill-from" not in line and
                          "--finetune-from" not in line for line in stage1)


def plan_runs(plan, results):
    """{run name: (its flags as a dict, the names of the runs it comes after)} of a plan at paper
    scale, read off the lines --list prints."""
    lines, runs, names = listed(plan, "--results", str(results)), {}, []
    for line in lines:
        command, comment = line.split("  # [")
        words = shlex.split(command.split("; else ")[-1].removesuffix("; fi"))
        flags, key = {}, None
        for word in words[2:]:
            if word.startswith("--"):
                key = word
                flags[key] = []
            elif key:
                flags[key].append(word)
        names.append(str(Path(flags["--out"][0]).relative_to(results / "runs")))
        after = re.search(r"after (.*)$", comment)
        runs[names[-1]] = ({k: " ".join(v) for k, v in flags.items()},
                           [names[int(i) - 1] for i in after[1].split(", ")] if after else [])
    return runs


# The paper's pairs of Table 1 (teacher, student), and the M of its KD+AT column: 200 images per
# class. Table 2's KD+AT student takes Table 1's M, the paper giving none (docs/reproducing.md).
TABLE1_PAIRS = [("wrn-16-2", "wrn-16-1"), ("wrn-40-1", "wrn-16-1"), ("wrn-40-2", "wrn-16-1"),
                ("wrn-40-1", "wrn-16-2"), ("wrn-40-2", "wrn-16-2"), ("wrn-40-2", "wrn-40-1")]
KDAT_M = 200


def test_the_paper_scale_kdat_students_of_tables_1_and_2_see_200_images_per_class(tmp_path):
    """Every KD+AT run of Table 1 (6 pairs x 3 seeds) and Table 2's (per dataset) distils from
    its pair's seed-0 teacher with M = 200, and Table 2's curves are of that student."""
    results = tmp_path / "r"
    table1 = plan_runs("table1", results)
    kdat = {name: flags for name, (flags, _) in table1.items() if "--distill-from" in flags}
    expected = {f"cifar10/kdat-{t}-{st}-m{KDAT_M}-seed{seed}": (t, st, seed)
                for t, st in TABLE1_PAIRS for seed in (0, 1, 2)}
    assert set(kdat) == set(expected)
    for name, (t, st, seed) in expected.items():
        flags = kdat[name]
        assert (flags["--samples-per-class"], flags["--arch"], flags["--seed"]) == \
               (str(KDAT_M), st, str(seed)), name
        assert flags["--distill-from"] == str(
            results / "runs" / "cifar10" / f"scratch-{t}-seed0" / "model.pt")
    table2 = plan_runs("table2", results)
    for ds in ("cifar10", "svhn"):
        flags, after = table2[f"{ds}/mte"]
        kd = f"{ds}/kdat-wrn-40-2-wrn-16-1-m{KDAT_M}-seed0"
        assert kd in after and str(results / "runs" / kd / "model.pt") in \
            flags["--student-checkpoint"]
        assert table2[kd][0]["--samples-per-class"] == str(KDAT_M)


def test_figure2_fine_tunes_each_seeds_own_zero_shot_student(tmp_path):
    """Figure 2, per dataset, M and seed: the zero-shot student of that seed fine-tuned on M
    images per class, beside KD+AT and a student without a teacher of the same seed and M."""
    results = tmp_path / "r"
    runs = plan_runs("figure2", results)
    for ds in ("cifar10", "svhn"):
        for seed in (0, 1, 2):
            start = f"{ds}/zeroshot-wrn-40-2-wrn-16-1-seed{seed}"
            assert runs[start][0]["--seed"] == str(seed)
            for m in (10, 25, 50, 75, 100):  # Figure 2's M > 0
                flags, after = runs[f"{ds}/finetune-wrn-40-2-wrn-16-1-m{m}-seed{seed}"]
                assert flags["--finetune-from"] == str(results / "runs" / start / "student.pt")
                assert start in after
                for kind in ("finetune", "kdat", "scratch"):
                    pattern = rf"{ds}/{kind}-(wrn-40-2-)?wrn-16-1-m{m}-seed{seed}"
                    (found,) = [f for n, (f, _) in runs.items() if re.fullmatch(pattern, n)]
                    assert (found["--seed"], found["--samples-per-class"]) == (str(seed), str(m))
    assert sum("--finetune-from" in flags for flags, _ in runs.values()) == 2 * 3 * 5


def test_the_cifar100_plan_distils_the_literature_pairs(tmp_path):
    lines = listed("cifar100", "--results", str(tmp_path / "r"))
    teachers = [line for line in lines if "train_teacher.py" in line]
    assert [re.search(r"--arch (\S+)", line)[1] for line in teachers] == ["resnet34", "vgg11",
                                                                          "wrn-40-2"]
    assert all("--dataset cifar100" in line for line in lines)
    pairs = {(re.search(r"scratch-(\S+?)-seed0", line)[1], re.search(r"--student (\S+)", line)[1])
             for line in lines if "zskt.py " in line}
    assert pairs == set(reproduce.LITERATURE_PAIRS)
    given = listed("cifar100", "--results", str(tmp_path / "r"), "--teachers", str(tmp_path / "p"))
    assert len(given) == 15 and not any("train_teacher.py" in line for line in given)
    assert f"--teacher-checkpoint {tmp_path / 'p' / 'cifar100_wrn40_2.pth'}" in "\n".join(given)


def test_the_tiny_pipeline_runs_skips_resumes_and_reports(tmp_path, capsys, short_test_split,
                                                          monkeypatch):
    # M-image runs scale their epochs by N / (C M): 200 one-step epochs at M = 10. The schedule
    # has tests of its own; this one is about the plan, so at most 10 epochs.
    schedule = tt.schedule

    def capped(*args):
        epochs, milestones = schedule(*args)
        return min(epochs, 10), milestones
    monkeypatch.setattr(tt, "schedule", capped)
    results = tmp_path / "r"

    def run(*flags):
        reproduce.main(["all", "--smoke", "--in-process", "--results", str(results), *flags])
    run()
    for name in ("table1.md", "table2.md", "figure2.md", "figure2.png"):
        assert (results / name).is_file(), name
    for name in ("table1.md", "table2.md", "figure2.md"):
        assert "missing" not in (results / name).read_text(), name
    table1 = (results / "table1.md").read_text()
    zs_dir = results / "runs" / "shapes" / "zeroshot-wrn-40-2-wrn-16-1-seed0"
    zs = json.loads((zs_dir / "summary.json").read_text())
    assert f"| WRN-40-2 → WRN-16-1 | zero-shot (ours), M = 0 | 83.69 ± 0.58 | " \
           f"{100 * zs['student_test_acc']:.2f} ± 0.00 | 1 |" in table1
    table2 = (results / "table2.md").read_text()
    mte = json.loads((results / "runs" / "shapes" / "mte" / "mte.json").read_text())
    assert f"| {mte['mte']['zero-shot']:.3f} |" in table2
    assert f"| {mte['images']['zero-shot']} / {mte['images']['KD+AT']} |" in table2
    capsys.readouterr()
    run()  # everything finished: nothing runs again
    assert "32 runs, 32 finished earlier" in capsys.readouterr().out
    # Two runs stopped before writing their result: each resumes through its script's --resume.
    ft_dir = results / "runs" / "shapes" / "finetune-wrn-40-2-wrn-16-1-m10-seed0"
    (zs_dir / "summary.json").unlink()
    (ft_dir / "model.pt").unlink()
    kdat = results / "runs" / "shapes" / "kdat-wrn-40-2-wrn-16-1-m10-seed0" / "model.pt"
    untouched = kdat.stat().st_mtime
    run()
    out = capsys.readouterr().out
    assert "32 runs, 30 finished earlier" in out and out.count("(stopped)") == 2
    assert (zs_dir / "summary.json").is_file() and (ft_dir / "model.pt").is_file()
    assert kdat.stat().st_mtime == untouched


def test_a_stage_runs_alone_and_waits_for_the_stages_before(tmp_path, capsys, short_test_split):
    results = tmp_path / "r"
    base = ["table2", "--smoke", "--in-process", "--results", str(results)]
    code, err = run_main([*base, "--stage", "2"], capsys, reproduce.main)  # its teacher is missing
    assert code == 2 and "blocked: needs shapes/scratch-wrn-40-2-seed0" in err
    assert not (results / "runs" / "shapes" / "scratch-wrn-40-2-seed0").exists()
    reproduce.main([*base, "--stage", "1"])
    assert "1 runs, 0 finished earlier" in capsys.readouterr().out
    assert (results / "runs" / "shapes" / "scratch-wrn-40-2-seed0" / "model.pt").is_file()
    assert not (results / "runs" / "shapes" / "zeroshot-wrn-40-2-wrn-16-1-seed0").exists()
    code, err = run_main([*base, "--stage", "7"], capsys, reproduce.main)
    assert code == 2 and "--stage 7: the plan table2 has stages 1..3" in err


def test_a_listed_curves_line_skips_a_finished_run_and_starts_an_interrupted_one_again(
        tmp_path, short_test_split):
    """The stage-3 line of Table 2, run by a scheduler a second time, leaves the finished curves
    as they are; run after an interruption (which leaves .unfinished and no mte.json), it
    computes them again. No --overwrite: nothing finished is ever recomputed."""
    results = tmp_path / "r"
    reproduce.main(["table2", "--smoke", "--in-process", "--results", str(results)])
    (line,) = listed("table2", "--smoke", "--results", str(results), "--stage", "3")
    assert "--overwrite" not in line
    folder = results / "runs" / "shapes" / "mte"
    finished = (folder / "mte.json").read_bytes()
    r = subprocess.run(line, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{folder} finished earlier" in r.stdout
    assert (folder / "mte.json").read_bytes() == finished
    (folder / "mte.json").unlink()
    (folder / ".unfinished").touch()
    r = subprocess.run(line, shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (folder / "mte.json").is_file() and not (folder / ".unfinished").exists()
    assert json.loads((folder / "mte.json").read_text())["images"]


def test_what_the_scripts_write_by_default_is_ignored_by_git(monkeypatch):
    """reproduce.py's default --results (results/<scale>), the runs, checkpoints and datasets of
    the other scripts: none of it shows up in `git status`."""
    if not (HERE / ".git").exists():
        pytest.skip("not a git checkout")
    monkeypatch.chdir(HERE)
    outs = [Path(re.search(r"--out (\S+)", line)[1]) for line in listed("table2")]
    written = [str(p.relative_to(HERE) / "model.pt") for p in outs] + [
        "results/paper/table2.md", "results/tiny/figure2.png", "runs/toy/toy.png",
        "runs/quick/summary.json", "checkpoints/shapes-wrn-16-1.pt",
        "data/cifar-10-python.tar.gz", "benchmark-gpu.md", "benchmarks-gpu-cpu.json"]
    assert all(w.startswith("results/paper/runs/") for w in written[:len(outs)])
    r = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=HERE,
                       capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(written), r.stderr


def test_reproduce_survives_a_kill_at_any_point(tmp_path):
    """The real thing: a subprocess per run, killed (SIGKILL, no cleanup) in the middle of a run,
    then started again until it finishes."""
    cmd = [sys.executable, str(HERE / "reproduce.py"), "table2", "--smoke", "--results",
           str(tmp_path / "r")]
    runs, killed = reproduce.runs_of("table2", "smoke"), []
    for _ in range(2):  # kill inside one run, then inside a later one
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        while p.poll() is None:
            going = [r.name for r in runs if reproduce.state(r, tmp_path / "r") == "stopped"
                     and r.name not in killed]
            if going:  # a run's directory exists and it has not finished: it is running now
                os.killpg(p.pid, signal.SIGKILL)
                killed.append(going[0])
                break
            time.sleep(0.05)
        p.wait()
    assert len(killed) == 2, killed
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "missing" not in (tmp_path / "r" / "table2.md").read_text()


def test_reproduce_refuses_mixed_results_and_reports_failed_runs(tmp_path, capsys):
    from zskt_utils import UserError
    results = tmp_path / "r"
    reproduce.check_results_dir(results, "smoke")
    with pytest.raises(UserError, match="holds runs of scale 'smoke'"):
        reproduce.check_results_dir(results, "tiny")
    teacher = results / "runs" / "shapes" / "scratch-wrn-40-2-seed0"
    teacher.mkdir(parents=True)
    (teacher / "model.pt").write_bytes(b"not a checkpoint")  # "finished", unreadable
    code, err = run_main(["table2", "--smoke", "--in-process", "--results", str(results)], capsys,
                         reproduce.main)
    assert code == 2 and "runs did not finish" in err
    # the run's own sentence, which names the unreadable file
    assert f"shapes/zeroshot-wrn-40-2-wrn-16-1-seed0 (error: {teacher / 'model.pt'} " in err
    assert "log: " + str(results / "logs") in err and "blocked: needs" in err
    assert "missing" in (results / "table2.md").read_text()  # never a number


def test_runs_that_all_fail_the_same_way_stop_the_plan_with_their_own_message(tmp_path):
    """With CIFAR-10 missing every run would fail alike: the plan stops after three and says why
    in the runs' own sentence, not with an exit status and a log path per run."""
    r = subprocess.run([sys.executable, str(HERE / "reproduce.py"), "table1", "--results",
                        str(tmp_path / "r"), "--data-dir", str(tmp_path / "nothing")],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stdout.count("  failed: error: cifar10 is not in") == 3  # then it stops
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the first 3 runs all failed with the same error, so the rest "
                           "would too: cifar10 is not in")
    assert "cifar-10-python.tar.gz" in last and len(last) < 600


def test_a_long_run_shows_its_progress(tmp_path, monkeypatch, capsys):
    """While a run goes, its latest progress line (from its log) appears every `every` seconds."""
    run = reproduce.Run("shapes/slow", "zskt.py", ())
    log = reproduce.log_file(run, tmp_path)
    script = ("import sys, time\nfor i in range(4):\n    print(f'Algorithm 1 {i}/4 | 1.00 it/s | "
              "whole run ETA 0m0{i}s', flush=True)\n    time.sleep(0.6)\n")
    monkeypatch.setattr(reproduce, "process", lambda *a: [sys.executable, "-c", script])
    assert reproduce.execute(run, tmp_path, tmp_path, every=1.0) is None
    shown = [line for line in capsys.readouterr().out.splitlines() if "Algorithm 1" in line]
    assert shown and all(line.startswith("    Algorithm 1 ") for line in shown)
    assert log.read_text().count("whole run ETA") == 4


def test_an_empty_results_folder_reports_every_run_missing(tmp_path, capsys):
    results = tmp_path / "r"
    reproduce.main(["all", "--smoke", "--report", "--results", str(results)])
    figure2 = (results / "figure2.md").read_text()
    assert "10.00 ± 0.00" not in figure2 and "chance" not in figure2
    curves = reproduce.figure2_data(results, "smoke", "shapes")
    assert all(point is None for curve in curves.values() for point in curve)
    for name in ("table1.md", "table2.md"):
        text = (results / name).read_text()
        assert "missing" in text and not re.search(r"\| \d+\.\d+ ± \d+\.\d+ \| [1-9]", text)
    reproduce.main(["cifar100", "--smoke", "--report", "--results", str(results)])
    assert "| resnet34 → resnet18 | missing | missing | missing | 0 |" in \
        (results / "cifar100.md").read_text()


def test_the_cifar100_plan_reports_final_and_best_accuracy(tmp_path, short_test_split, capsys):
    """At smoke scale the pairs run on shapes; the report sets the final test accuracy (the
    paper's protocol) beside the best over the log steps (the later literature's)."""
    results = tmp_path / "r"
    reproduce.main(["cifar100", "--smoke", "--in-process", "--results", str(results)])
    report = (results / "cifar100.md").read_text()
    for t, st in reproduce.LITERATURE_PAIRS:
        run = results / "runs" / "shapes" / f"zeroshot-{t}-{st}-seed0"
        final = 100 * json.loads((run / "summary.json").read_text())["student_test_acc"]
        rows = reproduce.zskt_run.read_rows(run / "metrics.csv")
        best = 100 * max(float(r["student_test_acc"]) for r in rows)
        assert f"| {t} → {st} | " in report
        assert f"| {final:.2f} ± 0.00 | {best:.2f} ± 0.00 | 1 |" in report
    assert "67.74" in report and "30.15" in report and "36.66" in report
