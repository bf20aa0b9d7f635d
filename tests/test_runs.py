"""Tests of a zero-shot run (zskt_run.py): checkpoints, resume equal to an uninterrupted run,
signals, locks, no wait for the device between log steps, config.json with other fields."""
import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zskt
import zskt_models
import zskt_run
import zskt_utils
from helpers import (HERE, TINY, TT_TINY, interrupt_at, metrics, run_main, run_printed,
                     stopped_command, tiny_config, tiny_run)
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


def test_resume_without_a_checkpoint_says_so(tmp_path, teacher_file, capsys):
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                   str(tmp_path / "r"), *TINY])
    for name in ("checkpoint.pt", "summary.json", "metrics.csv"):
        (tmp_path / "r" / name).unlink()  # as if killed before its first checkpoint
    capsys.readouterr()
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])
    assert "holds no checkpoint yet, so this run starts from iteration 0" in capsys.readouterr().out


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
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--out", str(tmp_path / "b"),
                          *TINY], capsys)
    assert code == 2 and "fails inside" in err and not (tmp_path / "b").exists()


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


def test_a_real_sigterm_ends_the_process_with_143_and_a_resume_command(tmp_path, teacher_file):
    p = subprocess.Popen([sys.executable, str(HERE / "zskt.py"), "--teacher-checkpoint",
                          str(teacher_file), "--iterations", "100000", "--out", str(tmp_path / "r"),
                          *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "test accuracy" in p.stdout.readline()  # training has started
    p.send_signal(signal.SIGTERM)
    err = p.communicate()[1]
    assert p.returncode == 143 and "SIGTERM after iteration" in err and "--resume" in err


def test_ctrl_c_is_acknowledged_at_once_and_a_second_one_names_the_surviving_checkpoint(
        tmp_path, shapes_test, monkeypatch, capsys):
    calls, original = [0], zskt.zero_shot_iteration

    def two_ctrl_c_in_iteration_3(*a):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
            assert "stopping after this step and saving a checkpoint; press Ctrl-C again" in \
                capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGINT)  # the second one interrupts at once
        return original(*a)
    monkeypatch.setattr(zskt, "zero_shot_iteration", two_ctrl_c_in_iteration_3)
    with pytest.raises(KeyboardInterrupt, match=r"without saving; the last checkpoint, "
                                                r".*checkpoint.pt \(iteration 2\), stays"):
        tiny_run({"iterations": 5}, shapes_test, tmp_path / "r")
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["iteration"] == 2


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
