"""Tests of a zero-shot run (zskt_run.py): checkpoints, resume equal to an uninterrupted run,
signals, locks, no wait for the device between log steps, config.json with other fields."""
import copy
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import zskt
import zskt_models
import zskt_run
import zskt_utils
from helpers import (HERE, TINY, TT_TINY, ignore_sigint, interrupt_at, metrics, run_main,
                     run_printed, stopped_command, tiny_config, tiny_run)
from zskt_utils import Stopped, UserError, load_checkpoint

import train_teacher as tt


@pytest.mark.parametrize("stop_at", [3, 4])  # between two log steps, and at a logged checkpoint
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, shapes_test, monkeypatch,
                                                          stop_at):
    tiny_run({"iterations": 6}, shapes_test, tmp_path / "a")
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", stop_at)  # a real SIGINT mid-iteration
    with pytest.raises(Stopped, match=f"after iteration {stop_at}"):
        tiny_run({"iterations": 6}, shapes_test, tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["iteration"] == stop_at
    monkeypatch.undo()
    tiny_run({"iterations": 6}, shapes_test, tmp_path / "b", resume=True)
    a, b = (load_checkpoint(tmp_path / d / "student.pt")["state_dict"] for d in "ab")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0) for k in a)
    ga, gb = (load_checkpoint(tmp_path / d / "checkpoint.pt")["generator"] for d in "ab")
    assert all(torch.allclose(ga[k].float(), gb[k].float(), atol=1e-6, rtol=0) for k in ga)
    ma, mb = metrics(tmp_path / "a" / "metrics.csv"), metrics(tmp_path / "b" / "metrics.csv")
    assert [r["iteration"] for r in mb] == ["2", "4", "6"]  # every row, the interrupted one's too
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        assert all(float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-5) for k in ra)


def test_a_run_uses_an_eval_mode_teacher_and_cosine_schedules(tmp_path, shapes_test, monkeypatch):
    torch.manual_seed(0)
    teacher, modes = zskt.wrn("wrn-10-1").train(), []  # handed over in train mode
    stats = copy.deepcopy(teacher.state_dict())
    original = zskt.zero_shot_iteration
    monkeypatch.setattr(zskt, "zero_shot_iteration",
                        lambda t, *a: modes.append(t.training) or original(t, *a))
    cfg = tiny_config(n_s=1, iterations=5, log_every=1, mte_images=0)
    zskt_run.train_zero_shot(cfg, teacher, shapes_test, tmp_path / "r")
    assert modes == [False] * 5 and all(torch.equal(v, teacher.state_dict()[k])
                                        for k, v in stats.items())
    rows = metrics(tmp_path / "r" / "metrics.csv")
    for row in rows:  # one cosine step per outer iteration, to 0 at the end (the author's)
        cosine = (1 + math.cos(math.pi * int(row["iteration"]) / 5)) / 2
        assert float(row["lr_generator"]) == pytest.approx(cfg.lr_generator * cosine, abs=1e-12)
        assert float(row["lr_student"]) == pytest.approx(cfg.lr_student * cosine, abs=1e-12)


def count_host_syncs(monkeypatch):
    """Records every call that waits for the device (.item(), .cpu(), .tolist(), bool(t), ...)
    made by the project's modules, with the number of the iteration during or after which it
    happened. (Torch's own CPU-side counters, such as Adam's step, are not counted.)"""
    modules = (zskt, zskt_utils, zskt_run, zskt_models, __import__("zskt_plots"))
    ours, where, syncs = {str(Path(m.__file__).resolve()) for m in modules}, [0], []
    original = zskt.zero_shot_iteration

    def marked(*a, **k):
        where[0] += 1
        return original(*a, **k)
    monkeypatch.setattr(zskt, "zero_shot_iteration", marked)
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        def counting(self, *a, _method=getattr(torch.Tensor, name), _name=name, **k):
            if str(Path(sys._getframe(1).f_code.co_filename).resolve()) in ours:
                syncs.append((where[0], _name))
            return _method(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counting)
    return syncs


def test_no_host_sync_between_log_steps(tmp_path, shapes_test, monkeypatch):
    syncs = count_host_syncs(monkeypatch)
    tiny_run({"iterations": 6, "log_every": 3, "checkpoint_every": 6}, shapes_test, tmp_path / "r")
    assert [s for s in syncs if s[0] not in (0, 3, 6)] == []  # nothing waits in 1, 2, 4, 5
    assert any(s[0] == 3 for s in syncs)  # the log step reads the values back (syncs are seen)


@pytest.mark.parametrize("steps", [2, 6])
def test_transition_curves_copy_to_the_host_once(steps, monkeypatch):
    monkeypatch.setattr(zskt, "CHUNK", 4)
    torch.manual_seed(0)
    a, b = zskt.WideResNet(10, 1, 4).eval(), zskt.WideResNet(10, 1, 4).eval()
    syncs = count_host_syncs(monkeypatch)
    zskt.transition_curves(a, b, torch.randn(3, 3, 32, 32), steps=steps)
    assert [name for _, name in syncs] == ["cpu"]


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    zskt_utils.save_atomic({"iteration": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, f):
        open(f, "wb").write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError):
        zskt_utils.save_atomic({"iteration": 2, "w": torch.zeros(3)}, path)
    assert load_checkpoint(path)["iteration"] == 1


def test_non_finite_loss_stops_with_the_iteration_and_keeps_the_checkpoint(tmp_path, shapes_test,
                                                                          monkeypatch):
    calls, original = [0], zskt.kl_divergence

    def nan_at_iteration_3(*args):  # 1 generator + 2 student losses per iteration
        calls[0] += 1
        return original(*args) * (float("nan") if calls[0] > 6 else 1.0)

    monkeypatch.setattr(zskt, "kl_divergence", nan_at_iteration_3)
    with pytest.raises(UserError, match="loss_generator and loss_student became nan or inf in "
                                        "iterations 3-4"):
        tiny_run({"iterations": 5}, shapes_test, tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def test_non_finite_loss_before_the_first_checkpoint_says_there_is_none(tmp_path, shapes_test,
                                                                        monkeypatch):
    original = zskt.kl_divergence
    monkeypatch.setattr(zskt, "kl_divergence", lambda *a: original(*a) * float("nan"))
    with pytest.raises(UserError, match="in iterations 1-2; no checkpoint had been written yet"):
        tiny_run({"iterations": 5, "checkpoint_every": 4}, shapes_test, tmp_path / "r")


def test_seeds_run_one_after_another_and_really_differ(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--seeds", "0",
                   "1", "--out", str(tmp_path / "runs"), *TINY])
    w0, w1 = (load_checkpoint(tmp_path / "runs" / f"seed{s}" / "student.pt") for s in (0, 1))
    assert (w0["seed"], w1["seed"]) == (0, 1)
    assert not torch.equal(w0["state_dict"]["conv1.weight"], w1["state_dict"]["conv1.weight"])
    out = capsys.readouterr().out
    assert "== seed 0 (1 of 2): " + str(tmp_path / "runs" / "seed0") + \
        "; the ETA below is this seed's, with 1 more seed after it" in out
    assert f"== seed 1 (2 of 2): {tmp_path / 'runs' / 'seed1'}\n" in out
    assert zskt_run.seeds_left([{"seconds": 50}, {"seconds": 70}], 2) == \
        "; this seed and the 2 after it: about 3m00s"


def test_an_interrupted_seeds_run_resumes_with_the_printed_command(tmp_path, teacher_file,
                                                                   user_env, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # relative paths everywhere, then another directory
    shutil.copy(teacher_file, "teacher.pt")
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    printed = stopped_command(lambda: zskt_run.main(["--teacher-checkpoint", "teacher.pt",
                                                     "--iterations", "3", "--seeds", "3", "4",
                                                     "--out", "runs/s", *TINY]))
    assert "== seed 3 (1 of 2)" in capsys.readouterr().out
    run = tmp_path / "work" / "runs" / "s"
    assert printed == f"{sys.executable} {HERE / 'zskt.py'} --out {run} --resume"
    # The command a user might guess for one seed works as well; the printed one does the rest.
    run_printed(f"python {HERE / 'zskt.py'} --out {run / 'seed3'} --resume", tmp_path / "elsewhere",
                user_env)
    out = run_printed(printed, tmp_path / "elsewhere", user_env).stdout
    assert "== seed 3 (1 of 2)" in out and "finished earlier" in out and "== seed 4 (2 of 2)" in out
    accs = [json.loads((run / f"seed{s}" / "summary.json").read_text())["student_test_acc"]
            for s in (3, 4)]
    agg = json.loads((run / "aggregate.json").read_text())
    assert agg["student_test_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert "over 2 seeds" in out and "seed*/student.pt" in out and "aggregate.json" in out


def test_folder_runs_resume_with_the_printed_commands(tmp_path, user_env, monkeypatch):
    from helpers import folder_data
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    folder_data(tmp_path / "work" / "pets")
    interrupt_at(monkeypatch, torch.optim.SGD, "step", 2)
    printed = stopped_command(lambda: tt.main(["--dataset", "folder", "--data-dir", "pets",
                                               "--arch", "wrn-10-1", "--epochs", "2",
                                               "--batch-size", "4"]))
    run_printed(printed, tmp_path / "elsewhere", user_env)
    teacher = tmp_path / "work" / zskt_run.default_teacher_path("folder", "wrn-10-1",
                                                                tmp_path / "work" / "pets")
    assert teacher.is_file()  # the resumed run still saves the teacher where zskt.py looks
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    printed = stopped_command(lambda: zskt_run.main(["--dataset", "folder", "--data-dir", "pets",
                                                     "--teacher", "wrn-10-1", "--iterations", "3",
                                                     "--out", "runs/f", *TINY]))
    run_printed(printed, tmp_path / "elsewhere", user_env)
    summary = json.loads((tmp_path / "work" / "runs" / "f" / "summary.json").read_text())
    assert summary["dataset"] == "folder"


def test_resume_compares_resolved_paths(tmp_path, teacher_file, monkeypatch, capsys):
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    shutil.copy(teacher_file, tmp_path / "a" / "checkpoints" / "t.pt")
    monkeypatch.chdir(tmp_path / "a")
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 1)
    stopped_command(lambda: zskt_run.main(["--teacher-checkpoint", "checkpoints/t.pt",
                                           "--iterations", "2", "--out", "run", *TINY]))
    monkeypatch.undo()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    code, err = run_main(["--out", "../a/run", "--resume", "--teacher-checkpoint",
                          "../a/checkpoints/other.pt"], capsys)
    assert code == 2 and "teacher_checkpoint=" in err and "other.pt (given)" in err
    zskt_run.main(["--out", "../a/run", "--resume", "--teacher-checkpoint",
                   "./../a/checkpoints/t.pt"])
    assert (tmp_path / "a" / "run" / "summary.json").is_file()


def test_a_resumed_run_s_clock_goes_on_from_its_checkpoint(tmp_path, shapes_test, monkeypatch,
                                                           capsys):
    """metrics.csv, summary.json and the report count the time before the resume (here 1000 s,
    written into the checkpoint) and the final evaluation (a clock that only moves in it)."""
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    stopped_command(lambda: tiny_run({"iterations": 4, "log_every": 1}, shapes_test, tmp_path))
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    zskt_utils.save_atomic({**state, "seconds": 1000.0}, tmp_path / "checkpoint.pt")
    now = [5000.0]
    monkeypatch.setattr(zskt_run, "time", types.SimpleNamespace(time=lambda: now[0]))
    original = zskt.transition_curves

    def curves_take_50_seconds(*a, **k):
        now[0] += 50 if "progress" in k else 0  # not the ETA's estimate
        return original(*a, **k)
    monkeypatch.setattr(zskt, "transition_curves", curves_take_50_seconds)
    summary = tiny_run({"iterations": 4, "log_every": 1}, shapes_test, tmp_path, resume=True)[2]
    seconds = [float(r["seconds"]) for r in zskt_run.read_rows(tmp_path / "metrics.csv")]
    assert seconds[2:] == [1000.0, 1000.0] and summary["seconds"] == 1050.0
    zskt_run.print_report([summary], tmp_path)
    assert "time                         17m30s  (Algorithm 1 and the final evaluation, resumes " \
        "included)" in capsys.readouterr().out


def test_rows_logged_after_the_last_checkpoint_are_not_kept_twice(tmp_path, shapes_test,
                                                                   monkeypatch):
    """Killed between a log step and its checkpoint: the resumed run logs iterations 3 and 4
    again, and metrics.csv holds each once, as an uninterrupted run's."""
    cfg = {"iterations": 4, "log_every": 1, "checkpoint_every": 2, "mte_images": 0}
    tiny_run(cfg, shapes_test, tmp_path / "a")

    class Killed(BaseException):
        pass
    original = zskt_run.checkpoint

    def killed_at_4(path, it, *a):
        if it == 4:
            raise Killed
        return original(path, it, *a)
    monkeypatch.setattr(zskt_run, "checkpoint", killed_at_4)
    with pytest.raises(Killed):
        tiny_run(cfg, shapes_test, tmp_path / "b")
    monkeypatch.undo()
    assert [r["iteration"] for r in metrics(tmp_path / "b" / "metrics.csv")] == \
        ["1", "2", "3", "4"]  # rows up to 4, the checkpoint at 2
    tiny_run(cfg, shapes_test, tmp_path / "b", resume=True)
    ma, mb = metrics(tmp_path / "a" / "metrics.csv"), metrics(tmp_path / "b" / "metrics.csv")
    assert [r["iteration"] for r in mb] == ["1", "2", "3", "4"]
    for ra, rb in zip(ma, mb):
        assert all(float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-5) for k in ra)


def test_a_log_file_of_stdout_and_stderr_keeps_their_order(tmp_path, teacher_file):
    """`> run.log 2>&1` from a shell (no PYTHONUNBUFFERED): stdout is block-buffered in a file,
    stderr is not; a resumed run's header comes before its progress lines, the report after."""
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--out",
                   str(tmp_path / "r"), *TINY])
    (tmp_path / "r" / "summary.json").unlink()
    command = [sys.executable, str(HERE / "zskt.py"), "--out", str(tmp_path / "r"), "--resume"]
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as in a shell
    with open(tmp_path / "both.log", "w") as f:
        subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=True, env=buffered)
    lines = (tmp_path / "both.log").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if "test accuracy |" in line)
    progress = next(i for i, line in enumerate(lines) if line.startswith("transition curves ("))
    report = next(i for i, line in enumerate(lines) if line.startswith("student test accuracy"))
    assert header < progress < report, lines


def test_the_eta_counts_the_curves_that_will_run_and_times_them_cheaply(tmp_path, shapes_test,
                                                                       monkeypatch):
    """On a CPU the ETA's trial is two steps (two updates) of TRIAL trajectories, not a batch of
    CHUNK; the estimate scales it to the images that agree at each log step (none: no curves to
    wait for)."""
    timed = []
    original = zskt.trajectory
    monkeypatch.setattr(zskt, "trajectory", lambda s, o, x, *a, **k: timed.append(
        (len(x), a[2].shape[-1])) or original(s, o, x, *a, **k))
    clock = types.SimpleNamespace(time=iter(range(0, 1000, 10)).__next__)  # 10 s per call
    monkeypatch.setattr(zskt_run, "time", clock)
    torch.manual_seed(0)
    net = zskt.wrn("wrn-10-1")
    cost = zskt_run.curves_cost(net, net, shapes_test, zskt.Config(mte_images=1000, mte_steps=100))
    assert timed == [(zskt_run.TRIAL, 3)] and cost.images == 200  # the test split has 200
    per_step = 10 / 2  # the clock moved 10 s over the trial's two steps
    assert cost.seconds() == pytest.approx(per_step * math.ceil(200 * 9 / zskt_run.TRIAL) * 100)
    assert cost.seconds(50) == pytest.approx(per_step * math.ceil(50 * 9 / zskt_run.TRIAL) * 100)
    assert cost.seconds(0) == 0
    monkeypatch.undo()
    # In a run: the extra seconds after each log step are those of the images that agree then.
    extras, cost = [], zskt_run.CurvesCost(7.0, 32, 9, 2, 200)
    monkeypatch.setattr(zskt_run, "curves_cost", lambda *a: cost)

    class Recorded(zskt_utils.Progress):
        def note(self, text):
            extras.append(self.extra)
            super().note(text)
    monkeypatch.setattr(zskt_run, "Progress", Recorded)
    tiny_run({"iterations": 4, "log_every": 1}, shapes_test, tmp_path)
    agree = [round(float(r["agreement"]) * 200) for r in zskt_run.read_rows(tmp_path /
                                                                           "metrics.csv")]
    assert extras == [7.0 * math.ceil(n * 9 / 32) * 2 for n in agree]
    assert min(agree) < 200  # so the extras differ from the estimate for all 200 images


def test_printed_lines_reach_a_log_file_in_order(tmp_path, monkeypatch):
    """stdout in a file is block-buffered: a run flushes it after each line (tee), and before
    each progress line on stderr (Progress), so `> run.log 2>&1` keeps the order of printing."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16)))
    with zskt_utils.tee(tmp_path / "log.txt"):
        print("teacher wrn-16-1: 99.15% test accuracy")
        assert raw.getvalue() == b"teacher wrn-16-1: 99.15% test accuracy\n"
    print("a line printed outside a run")
    zskt_utils.Progress(10, "Algorithm 1", file=io.StringIO()).line()
    assert raw.getvalue().endswith(b"a line printed outside a run\n")


def test_resume_without_a_checkpoint_says_so(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                   str(tmp_path / "r"), *TINY])
    for name in ("checkpoint.pt", "summary.json", "metrics.csv"):
        (tmp_path / "r" / name).unlink()  # as if killed before its first checkpoint
    capsys.readouterr()
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])
    assert "holds no checkpoint yet, so this run starts from iteration 0" in capsys.readouterr().out


def test_a_finished_or_stopped_run_keeps_no_lock_file(tmp_path, teacher_file, small_shapes,
                                                      monkeypatch):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--seeds", "0",
                   "1", "--out", str(tmp_path / "z"), *TINY])
    tt.main([*TT_TINY, "--epochs", "1", "--out", str(tmp_path / "t")])
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 1)
    stopped_command(lambda: zskt_run.main(["--teacher-checkpoint", str(teacher_file),
                                           "--iterations", "2", "--out", str(tmp_path / "s"),
                                           *TINY]))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(".lock")) == []


def test_a_lock_file_removed_by_the_process_that_held_it_is_not_locked(tmp_path, monkeypatch):
    """The holder removes its lock file as it ends; a process that opened that file just before
    must not lock it (it is no longer in the directory, and a third process would lock a new
    one): it locks the file that is there."""
    import fcntl
    path, original, ended = tmp_path / ".lock", fcntl.flock, []
    path.touch()

    def holder_ends_meanwhile(f, how):
        if not ended:
            ended.append(path.unlink())
        return original(f, how)
    monkeypatch.setattr(fcntl, "flock", holder_ends_meanwhile)
    f = zskt_utils.locked_file(path)
    assert os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    monkeypatch.undo()
    with pytest.raises(UserError, match="another process is writing"):
        zskt_utils.locked_file(path)
    f.close()


def test_one_process_per_run_directory_and_no_stale_lock(tmp_path, teacher_file, capsys):
    out = tmp_path / "r"
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                   str(out), *TINY])
    (out / "summary.json").unlink()  # so that --resume has work to do (a finished run reports)
    with zskt_utils.run_lock(out):  # another writer holds the run
        code, err = run_main(["--out", str(out), "--resume"], capsys)
    assert code == 2 and "another process is writing" in err
    # A process that dies while holding the lock (kill -9) does not leave the run locked.
    script = (f"import os, zskt_utils as u\nwith u.run_lock({str(out)!r}):\n"
              f"    os.kill(os.getpid(), 9)")
    r = subprocess.run([sys.executable, "-c", script], cwd=HERE)
    assert r.returncode == -9 and (out / ".lock").exists()
    zskt_run.main(["--out", str(out), "--resume"])


def test_failed_starts_leave_no_directory(tmp_path, teacher_file, capsys, monkeypatch):
    other = tmp_path / "svhn.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1"), "wrn-10-1", "svhn",
                                            *zskt.MEAN_STD["svhn"], 32), other)
    code, err = run_main(["--dataset", "shapes", "--teacher-checkpoint", str(other), "--out",
                          str(tmp_path / "a"), *TINY], capsys)
    assert code == 2 and "trained on dataset svhn, image_size 32" in err
    assert "dataset shapes (image size 16)" in err and not (tmp_path / "a").exists()
    def fails(*a):
        raise UserError("fails inside")
    monkeypatch.setattr(zskt, "predict", fails)
    command = ["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
               str(tmp_path / "b"), *TINY]
    code, err = run_main(command, capsys)
    assert code == 2 and "fails inside" in err and not (tmp_path / "b").exists()
    for failure in (RuntimeError("a bug"), KeyboardInterrupt()):  # nor for any other failure
        monkeypatch.setattr(zskt, "predict", lambda *a: (_ for _ in ()).throw(failure))
        with pytest.raises(type(failure)):
            zskt_run.main(command)
        assert not (tmp_path / "b").exists()
    monkeypatch.undo()
    zskt_run.main(command)  # so the same command starts it


def test_bad_seeds_are_refused_before_a_run_directory_exists(tmp_path, teacher_file, capsys):
    for flags in (["--seed", "-1"], ["--seed", str(2 ** 32)], ["--seeds", "-1", "2"]):
        code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--out",
                              str(tmp_path / "r"), *TINY, *flags], capsys)
        assert code == 2 and "seeds must be whole numbers from 0 to 2**32 - 1" in err, err
        assert not (tmp_path / "r").exists()
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--seed",
                   str(2 ** 32 - 1), "--out", str(tmp_path / "r"), *TINY])  # the largest works


def test_the_api_names_its_own_arguments_in_errors(tmp_path, shapes_test):
    tiny_run({"iterations": 1}, shapes_test, tmp_path / "r")
    with pytest.raises(UserError, match="pass resume=True to continue that run, overwrite=True"):
        tiny_run({"iterations": 1}, shapes_test, tmp_path / "r")


def test_sigterm_exits_with_the_same_status_in_both_scripts(tmp_path, shapes_test, small_shapes,
                                                            monkeypatch):
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    monkeypatch.setattr(signal, "SIGINT", signal.SIGTERM)  # interrupt_at sends SIGTERM instead
    with pytest.raises(Stopped, match="SIGTERM after iteration 2") as stopped:
        tiny_run({"iterations": 5}, shapes_test, tmp_path / "a")
    interrupt_at(monkeypatch, torch.optim.SGD, "step", 2)
    with pytest.raises(Stopped, match="SIGTERM: saved") as stopped_tt:
        tt.main([*TT_TINY, "--epochs", "2", "--out", str(tmp_path / "b")])
    assert stopped.value.status == stopped_tt.value.status == 128 + 15


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_real_signal_ends_the_process_with_its_status_and_a_resume_command(signum, status,
                                                                             tmp_path,
                                                                             teacher_file):
    """Sent once the run is inside Algorithm 1 (its progress line of iteration 2 is out), to a
    process started as a background job of a script is (SIGINT ignored)."""
    p = subprocess.Popen([sys.executable, str(HERE / "zskt.py"), "--teacher-checkpoint",
                          str(teacher_file), "--iterations", "100000", "--out", str(tmp_path / "r"),
                          *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=ignore_sigint)
    for line in p.stderr:
        if line.startswith("Algorithm 1 2/100000"):
            break
    p.send_signal(signum)
    out, err = p.communicate()
    name = signal.Signals(signum).name
    assert p.returncode == status and f"{name} after iteration" in err and "--resume" in err, err
    log = (tmp_path / "r" / "log.txt").read_text()
    assert log.splitlines()[-1] == err.splitlines()[-1]  # the log ends with "continue with: ..."


def test_a_signal_handler_s_line_during_a_write_is_no_error(tmp_path, monkeypatch, capfd):
    """CPython runs signal handlers between the system calls of a buffered write, with the
    stream's lock held; the handler's own line on the same stream would raise 'reentrant call'.
    Here the signal arrives while a line goes into the run's log (as a signal sent the moment a
    process prints does), and while a line goes to stderr."""
    class Signalling(io.RawIOBase):  # a file whose first write brings a real SIGINT
        def __init__(self):
            self.sent = False

        def writable(self):
            return True

        def write(self, b):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return len(b)

    def signalling_file(*a, **k):
        return io.TextIOWrapper(io.BufferedWriter(Signalling()), line_buffering=True)
    monkeypatch.setattr(zskt_utils, "open", signalling_file, raising=False)  # tee's log file
    with zskt_utils.tee(tmp_path / "log.txt"), zskt_utils.StopOnSignal() as stop:
        print("a line for the log")
    assert stop.signal == "SIGINT"
    assert capfd.readouterr().err.count("SIGINT: stopping after this step") == 1
    monkeypatch.undo()
    monkeypatch.setattr(sys, "stderr", signalling_file())
    with zskt_utils.StopOnSignal() as stop:
        print("a progress line", file=sys.stderr)
    assert stop.signal == "SIGINT" and "SIGINT: stopping after this step" in capfd.readouterr().err


@pytest.mark.parametrize("signum,again", [
    (signal.SIGINT, "press Ctrl-C again to stop at once without saving"),
    (signal.SIGTERM, "a second SIGTERM or SIGINT stops at once without saving")])
def test_a_signal_is_acknowledged_at_once_and_a_second_one_names_the_surviving_checkpoint(
        signum, again, tmp_path, shapes_test, monkeypatch, capsys):
    """A batch job cannot press Ctrl-C: SIGTERM's acknowledgement says what a second signal does,
    and a second SIGTERM ends the process with SIGTERM's status."""
    calls, original = [0], zskt.zero_shot_iteration
    name = signal.Signals(signum).name

    def two_signals_in_iteration_3(*a):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signum)
            assert f"{name}: stopping after this step and saving a checkpoint; {again}" in \
                capsys.readouterr().err
            os.kill(os.getpid(), signum)  # the second one interrupts at once
        return original(*a)
    monkeypatch.setattr(zskt, "zero_shot_iteration", two_signals_in_iteration_3)
    raised = KeyboardInterrupt if signum == signal.SIGINT else Stopped
    with pytest.raises(raised, match=r"without saving; the last checkpoint, "
                                     r".*checkpoint.pt \(iteration 2\), stays") as e:
        tiny_run({"iterations": 5}, shapes_test, tmp_path / "r")
    assert zskt_utils.exit_message(e.value)[1] == 128 + signum
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["iteration"] == 2
    assert "Ctrl-C" not in capsys.readouterr().err or signum == signal.SIGINT


def test_start_or_resume_continues_a_stopped_run_in_both_scripts(tmp_path, teacher_file,
                                                                 small_shapes, monkeypatch, capsys):
    flags = ["--teacher-checkpoint", str(teacher_file), "--iterations", "3", "--out",
             str(tmp_path / "z"), *TINY, "--start-or-resume"]
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    stopped_command(lambda: zskt_run.main(flags))
    interrupt_at(monkeypatch, torch.optim.SGD, "step", 2)
    tt_flags = [*TT_TINY, "--epochs", "2", "--out", str(tmp_path / "t"), "--start-or-resume"]
    stopped_command(lambda: tt.main(tt_flags))
    monkeypatch.undo()
    zskt_run.main(flags)  # the same commands again: they finish the runs
    tt.main(tt_flags)
    assert load_checkpoint(tmp_path / "z" / "checkpoint.pt")["iteration"] == 3
    assert (tmp_path / "z" / "summary.json").is_file() and (tmp_path / "t" / "model.pt").is_file()
    capsys.readouterr()
    zskt_run.main(flags)  # and once more: nothing is left to do
    tt.main(tt_flags)
    out = capsys.readouterr().out
    assert "finished earlier" in out and "t finished earlier: wrn-10-1" in out


def test_a_config_with_missing_or_unknown_fields_resumes(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--out",
                   str(tmp_path / "r"), *TINY])
    (tmp_path / "r" / "summary.json").unlink()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["data_dir"], saved["image_size"]  # fields that may be missing ...
    saved["config"]["a_field_of_another_version"] = 1  # ... and one that is not known
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])
    assert (tmp_path / "r" / "summary.json").is_file()
    (tmp_path / "r" / "config.json").write_text("{ damaged")
    code, err = run_main(["--out", str(tmp_path / "r"), "--resume"], capsys)
    assert code == 2 and "is not a zskt.py run's configuration" in err


def test_a_run_started_from_python_resumes_from_the_command_line(tmp_path, shapes_test,
                                                                 monkeypatch):
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 2)
    printed = stopped_command(lambda: tiny_run({"iterations": 3}, shapes_test, tmp_path / "r"))
    monkeypatch.undo()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert Path(saved["teacher_checkpoint"]) == (tmp_path / "r" / "teacher.pt").resolve()
    assert load_checkpoint(tmp_path / "r" / "teacher.pt")["classes"] == list(shapes_test.classes)
    assert printed.endswith(f"--out {(tmp_path / 'r').resolve()} --resume")
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["iterations"] == 3


def test_a_run_without_a_terminal_prints_plain_progress_lines_and_keeps_a_log(tmp_path,
                                                                             teacher_file):
    r = subprocess.run([sys.executable, str(HERE / "zskt.py"), "--teacher-checkpoint",
                        str(teacher_file), "--iterations", "4", "--out", str(tmp_path / "r"),
                        *TINY], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("Algorithm 1 ")]
    assert [line.split(" |")[0] for line in lines] == ["Algorithm 1 2/4", "Algorithm 1 4/4"]
    assert all("it/s | whole run ETA" in line and "student " in line for line in lines)
    assert "\r" not in r.stderr
    log = (tmp_path / "r" / "log.txt").read_text()
    assert all(line in log for line in lines) and "student test accuracy" in log
    assert "transition curves" in log and (tmp_path / "r" / "training.png").is_file()


def test_the_log_file_leaves_out_progress_bar_redraws(tmp_path):
    with zskt_utils.tee(tmp_path / "log.txt"):
        sys.stderr.write("\rtraining 1/10 [00:01<00:09]")
        print("a line worth keeping")
    assert (tmp_path / "log.txt").read_text() == "a line worth keeping\n"


def test_tensorboard_writes_event_files_or_explains_itself(tmp_path, teacher_file, capsys,
                                                           monkeypatch):
    pytest.importorskip("tensorboard", reason="optional for users; .ci/run installs it")
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--out",
                   str(tmp_path / "a"), *TINY, "--tensorboard"])
    assert list((tmp_path / "a" / "tensorboard").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were missing
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--iterations", "2", "--out",
                          str(tmp_path / "b"), *TINY, "--tensorboard"], capsys)
    assert code == 2 and "pip install tensorboard" in err and not (tmp_path / "b").exists()


def test_label_targets_are_the_default_of_a_run(tmp_path, teacher_file, monkeypatch):
    seen, original = [], zskt.transition_curves
    # The final report's calls (the ETA estimate's steps=2 call passes no progress).
    monkeypatch.setattr(zskt, "transition_curves", lambda *a, **k: (
        "progress" in k and seen.append(a[5])) or original(*a, **k))
    base = ["--teacher-checkpoint", str(teacher_file), "--iterations", "1", *TINY]
    zskt_run.main([*base, "--out", str(tmp_path / "a")])
    zskt_run.main([*base, "--out", str(tmp_path / "b"), "--mte-targets", "predicted"])
    assert seen[0] is not None and seen[1] is None


def test_the_default_path_is_real_fp32(tmp_path, teacher_file, small_shapes, shapes_test):
    """cuDNN would run fp32 convolutions in TF32 on recent GPUs: every script, and a run started
    from Python, turns that off. (Checked on the flags, which exist on a CPU machine too.)"""
    def from_python(out):
        tiny_run(dict(iterations=1), shapes_test, tmp_path / out)
    for main, flags in ((zskt_run.main, ["--teacher-checkpoint", str(teacher_file), "--iterations",
                                         "1", "--out", str(tmp_path / "z"), *TINY]),
                        (from_python, "api"),
                        (tt.main, [*TT_TINY, "--epochs", "1", "--out", str(tmp_path / "t")]),
                        (zskt_run.main, ["curves", "--teacher-checkpoint", str(teacher_file),
                                         "--student-checkpoint", str(teacher_file), "--images",
                                         "2", "--steps", "2", "--out", str(tmp_path / "c")])):
        before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        try:
            main(flags)
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def graph_path_on_this_cpu(monkeypatch):
    """--cuda-graph's code path on a CPU: zskt_graph's uncaptured stand-in for the CUDA graph
    (capture records, replay runs), with the CUDA check off."""
    import zskt_graph
    monkeypatch.setattr(zskt_graph, "require_cuda", lambda *a, **k: None)
    monkeypatch.setattr(zskt_graph, "CudaGraphs", lambda device: zskt_graph.Eager())


def test_a_cuda_graph_run_equals_an_eager_one_and_resumes_on_either_path(tmp_path, shapes_test,
                                                                         monkeypatch):
    tiny_run({"iterations": 6}, shapes_test, tmp_path / "eager")
    graph_path_on_this_cpu(monkeypatch)
    tiny_run({"iterations": 6, "cuda_graph": True}, shapes_test, tmp_path / "graph")
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 3)  # stopped on the graph path ...
    with pytest.raises(Stopped, match="after iteration 3"):
        tiny_run({"iterations": 6, "cuda_graph": True}, shapes_test, tmp_path / "switched")
    monkeypatch.undo()  # ... resumed on the eager one, from the checkpoint the graph path wrote
    tiny_run({"iterations": 6}, shapes_test, tmp_path / "switched", resume=True)
    eager = load_checkpoint(tmp_path / "eager" / "checkpoint.pt")
    for run in ("graph", "switched"):
        other = load_checkpoint(tmp_path / run / "checkpoint.pt")
        for part in ("student", "generator"):
            assert all(torch.equal(eager[part][k], other[part][k]) for k in eager[part]), run
        lr = other["opt_student"]["param_groups"][0]["lr"]
        assert type(lr) is float and lr == eager["opt_student"]["param_groups"][0]["lr"]
        assert metrics(tmp_path / run / "metrics.csv") == metrics(tmp_path / "eager" /
                                                                  "metrics.csv"), run


def test_a_cuda_graph_run_without_cuda_is_refused_in_one_sentence(tmp_path, teacher_file, capsys):
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--cuda-graph", "--out",
                          str(tmp_path / "r"), "--device", "cpu", *TINY], capsys)
    assert code == 2 and err.count("\n") == 0 and "needs a CUDA device" in err
    assert "drop --cuda-graph" in err and not (tmp_path / "r").exists()
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--cuda-graph", "--compile",
                          "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and "cannot be combined" in err and not (tmp_path / "r").exists()
