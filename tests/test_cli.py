"""Tests of `python zskt.py` and `python zskt.py curves` as a user meets them: outputs, help, and
bad input answered by one sentence with exit status 2 (never a traceback, never lost work)."""
import argparse
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import zskt
import zskt_models
import zskt_run
import zskt_shapes
from helpers import (HERE, TINY, Pickled, author_files, folder_data, help_text, interrupt_at,
                     run_main)
from zskt_utils import UserError, load_checkpoint


def test_cli_run_writes_every_output(tmp_path, teacher_file):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "zskt.py", "--teacher-checkpoint", str(teacher_file),
                        "--iterations", "3", "--out", str(out), *TINY], capture_output=True,
                       text=True, timeout=300, cwd=HERE)
    assert r.returncode == 0, r.stderr
    for name in ["metrics.csv", "samples_000002.png", "samples_000003.png", "student.pt",
                 "checkpoint.pt", "summary.json", "curves.npz", "config.json", "transition.png",
                 "training.png", "log.txt"]:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher"] == "wrn-10-1" and summary["iterations"] == 3
    assert summary["classes"] == list(zskt_shapes.CLASSES)
    assert sum(summary["teacher_classes_last_pseudo_batch"]) == 8  # the batch size
    student, meta = zskt_models.load_model(out / "student.pt", "wrn-10-1", 10)
    assert meta["test_acc"] == summary["student_test_acc"] and meta["image_size"] == 16
    assert np.load(out / "curves.npz")["p_stepped"].shape == (3, 9, 2)
    assert "student / teacher ratio" in r.stdout and "mean transition error" in r.stdout


def test_author_format_checkpoints_load(tmp_path):
    net = zskt.wrn("wrn-16-2")
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}},
               tmp_path / "dp.pt")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "plain.pt")
    for f in ("dp.pt", "plain.pt"):
        loaded, _ = zskt_models.load_model(tmp_path / f, "wrn-16-2", 10)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                     net.state_dict().values()))


@pytest.mark.parametrize("legacy", [False, True])  # the author's files come from PyTorch 1.0
def test_the_author_save_model_files_load(tmp_path, legacy):
    student, teacher = author_files(tmp_path, legacy)
    for name, net in (("zs_last.pth.tar", student), ("teacher_last.pth.tar", teacher)):
        loaded, meta = zskt_models.load_model(tmp_path / name, "wrn-10-1", 10)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                     net.state_dict().values()))
        assert meta["dataset"] == "cifar10" and isinstance(meta["args"], argparse.Namespace)


def test_the_author_files_work_through_both_commands(tmp_path, monkeypatch):
    author_files(tmp_path, legacy=False)
    x, y, _ = zskt.load_dataset("shapes", "test")  # stands in for CIFAR-10's test split
    monkeypatch.setattr(zskt, "load_dataset", lambda *a: (x[:100], y[:100], tuple("0123456789")))
    zskt_run.main(["--dataset", "cifar10", "--teacher-checkpoint",
                   str(tmp_path / "teacher_last.pth.tar"), "--iterations", "1", "--out",
                   str(tmp_path / "run"), "--allow-dataset-mismatch", *TINY])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["teacher"] == "wrn-10-1"
    zskt_run.main(["curves", "--teacher-checkpoint", str(tmp_path / "teacher_last.pth.tar"),
                   "--student-checkpoint", str(tmp_path / "zs_last.pth.tar"), "--images", "2",
                   "--steps", "2", "--out", str(tmp_path / "curves")])
    mte = json.loads((tmp_path / "curves" / "mte.json").read_text())
    assert mte["dataset"] == "cifar10" and set(mte["mte"]) == {"zs_last.pth"}


def test_other_pickled_objects_are_still_refused(tmp_path):
    torch.save({"state_dict": zskt.wrn("wrn-10-1").state_dict(),
                "args": argparse.Namespace(opt=Pickled())}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="pickled Python objects"):
        zskt_models.load_model(tmp_path / "evil.pt")


def test_a_run_checkpoint_passed_as_a_model_names_the_model_file(small_shapes, tmp_path,
                                                                 teacher_file):
    import train_teacher
    train_teacher.main(["--arch", "wrn-10-1", "--batch-size", "32", "--max-steps", "3",
                        "--epochs", "1", "--out", str(tmp_path / "t")])
    with pytest.raises(UserError, match=f"the trained model is in {tmp_path / 't' / 'model.pt'}"):
        zskt_models.load_model(tmp_path / "t" / "checkpoint.pt")
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                   str(tmp_path / "z"), *TINY])
    with pytest.raises(UserError, match="student.pt next to it"):
        zskt_models.load_model(tmp_path / "z" / "checkpoint.pt")


@pytest.mark.parametrize("case,args,message", [
    ("arch", ["--student", "resnet-18"], "unknown architecture 'resnet-18'"),
    ("iterations", ["--iterations", "0"], "--iterations must be at least 1"),
    ("batch", ["--batch-size", "1"], "BatchNorm needs two examples"),
    ("beta", ["--beta", "-1"], "--beta must be at least 0"),
    ("n_s", ["--n-s", "0"], "--n-s must be at least 1"),
    ("device", ["--device", "tpu"], "unknown device 'tpu'"),
    ("cuda", ["--device", "cuda"], "--device cuda was asked for, but it is not available here"),
    ("mismatch", ["--teacher", "wrn-16-1"], "holds a wrn-10-1 with 10 classes, but a wrn-16-1"),
    ("classes", [], "holds a wrn-10-1 with 5 classes, but a network with 10 classes was expected"),
    ("corrupt", [], "is truncated or corrupt"),
    ("pickle", [], "holds pickled Python objects"),
    ("unwritable", [], "cannot write to output directory"),
    ("exists", [], "already holds files; pass --resume"),
    ("resume", ["--resume", "--batch-size", "4"], "batch_size=8 (saved) vs 4 (given)"),
    ("lr_inf", ["--lr-student", "inf"], "--lr-student must be a positive number, not inf"),
    ("mps", ["--device", "mps"], "--device mps was asked for, but it is not available here"),
    ("seeds", ["--seed", "7", "--seeds", "0", "1"], "--seed and --seeds contradict each other"),
    ("same_seeds", ["--seeds", "1", "1"], "repeats a seed"),
    ("file_as_arch", ["--teacher", "teacher.pt"], "a teacher's file with --teacher-checkpoint"),
])
def test_bad_input_gives_one_sentence_and_exit_2(case, args, message, tmp_path, teacher_file,
                                                 capsys):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    if case == "classes":
        torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1", 5), "wrn-10-1", "shapes",
                                                (0,) * 3, (1,) * 3), teacher_file)
    if case == "corrupt":
        teacher_file.write_bytes(teacher_file.read_bytes()[:5000])
    if case == "pickle":
        torch.save({"state_dict": zskt.wrn("wrn-10-1").state_dict(), "extra": Pickled()},
                   teacher_file)
    if case == "unwritable":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    if case in ("exists", "resume"):
        zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                       str(out), *TINY])
        capsys.readouterr()
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                          str(out), *TINY, *args], capsys)
    assert code == 2 and message in err, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_more_bad_input_is_one_sentence(tmp_path, teacher_file, capsys, monkeypatch):
    folder_data(tmp_path / "pets")
    code, err = run_main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"),
                          "--image-size", "30"], capsys)
    assert code == 2 and "must be a multiple of 4" in err
    zskt_run.main(["--teacher-checkpoint", str(teacher_file), "--iterations", "1", "--out",
                   str(tmp_path / "r"), *TINY])
    for flags, message in [(["--overwrite"], "--resume and --overwrite contradict"),
                           (["--image-size", "20"], "image_size=16 (saved) vs 20 (given)")]:
        code, err = run_main(["--out", str(tmp_path / "r"), "--resume", *flags], capsys)
        assert code == 2 and message in err, err


def test_missing_teacher_names_the_command_that_creates_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(["--out", str(tmp_path / "run")], capsys)
    train = f"{sys.executable} {HERE / 'train_teacher.py'} --dataset shapes --arch wrn-16-1"
    assert code == 2 and train in err
    # The literature's spelling of a WideResNet names the file train_teacher.py writes.
    code, err = run_main(["--teacher", "wrn16_2", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "shapes-wrn-16-2.pt" in err and train[:-1] + "2" in err, err


def test_missing_dataset_says_where_to_put_it(tmp_path, teacher_file, capsys):
    for dataset, file in (("cifar10", "cifar-10-python.tar.gz"),
                          ("cifar100", "cifar-100-python.tar.gz")):
        code, err = run_main(["--dataset", dataset, "--teacher-checkpoint", str(teacher_file),
                              "--data-dir", str(tmp_path / "nowhere"), "--out",
                              str(tmp_path / "run"), "--allow-dataset-mismatch"], capsys)
        assert code == 2 and file in err and "nowhere" in err, err
    code, err = run_main(["--dataset", "imagenet"], capsys)
    assert code == 2 and "invalid choice: 'imagenet'" in err


def test_svhn_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "SVHN",
                        lambda **k: (_ for _ in ()).throw(ImportError("no", name="scipy")))
    with pytest.raises(ImportError, match="svhn needs the scipy package: pip install scipy"):
        zskt.load_dataset("svhn", "test", tmp_path)


def test_a_teacher_of_another_dataset_runs_only_when_allowed(tmp_path, capsys):
    other = tmp_path / "svhn.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1"), "wrn-10-1", "svhn",
                                            *zskt.MEAN_STD["svhn"]), other)
    base = ["--dataset", "shapes", "--teacher-checkpoint", str(other), "--iterations", "1",
            "--out", str(tmp_path / "a"), *TINY]
    code, err = run_main(base, capsys)
    assert code == 2 and "trained on dataset svhn" in err and "--allow-dataset-mismatch" in err
    zskt_run.main([*base, "--allow-dataset-mismatch"])


def test_the_dataset_defaults_to_the_one_the_teacher_file_names(tmp_path, capsys, monkeypatch):
    other = tmp_path / "svhn.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1"), "wrn-10-1", "svhn",
                                            *zskt.MEAN_STD["svhn"]), other)
    asked = []
    monkeypatch.setattr(zskt, "load_dataset", lambda name, *a: asked.append(name) or
                        (_ for _ in ()).throw(FileNotFoundError(f"{name} is not here")))
    code, err = run_main(["--teacher-checkpoint", str(other), "--out", str(tmp_path / "r")], capsys)
    assert asked == ["svhn"] and code == 2 and "svhn is not here" in err


def test_folder_teachers_never_collide_and_folders_need_a_data_dir(tmp_path, capsys):
    import train_teacher
    a, b = tmp_path / "x" / "pets", tmp_path / "y" / "pets"
    assert zskt_run.default_teacher_path("folder", "wrn-10-1", a) != \
        zskt_run.default_teacher_path("folder", "wrn-10-1", b)
    code, err = run_main(["--dataset", "folder"], capsys)
    assert code == 2 and "--dataset folder needs --data-dir" in err
    with pytest.raises(UserError, match="--dataset folder needs --data-dir"):
        train_teacher.main(["--dataset", "folder"])


def test_folder_images_are_resized_to_the_image_size_and_zskt_follows_the_teacher(tmp_path):
    import train_teacher
    folder_data(tmp_path / "pets")
    train_teacher.main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--arch",
                        "wrn-10-1", "--epochs", "1", "--image-size", "16", "--out",
                        str(tmp_path / "t")])
    model, meta = zskt_models.load_model(tmp_path / "t" / "model.pt")
    assert meta["image_size"] == 16
    base = ["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--teacher-checkpoint",
            str(tmp_path / "t" / "model.pt")]
    zskt_run.main([*base, "--iterations", "1", "--out", str(tmp_path / "z"), *TINY])
    assert zskt_models.load_model(tmp_path / "z" / "student.pt")[1]["image_size"] == 16
    with pytest.raises(UserError, match="image_size 16"):
        zskt_run.main([*base, "--image-size", "32", "--out", str(tmp_path / "w"), *TINY])


def test_help_says_what_each_flag_is_with_the_chosen_dataset_defaults(monkeypatch):
    shapes, cifar = (re.sub(r"\s+", " ", help_text("zskt.py", args, monkeypatch))
                     for args in ([], ["--dataset", "cifar10"]))
    assert re.search(r"--n-s N_S student steps per pseudo batch \(n_S in Algorithm 1\) "
                     r"\(default for shapes: 20\)", shapes)
    assert "(default for cifar10: 10)" in cifar and "(default for cifar10: 80000)" in cifar
    for field in zskt.Config.__dataclass_fields__:
        if field != "dataset":
            assert f"--{field.replace('_', '-')}" in shapes


# --- zskt.py curves -------------------------------------------------------------------------------

def test_curves_command_compares_students_against_a_teacher(tmp_path, teacher_file):
    torch.manual_seed(1)
    for name, noise in (("zs", 0.0), ("kd", 0.01)):  # near-copies of the teacher: they agree
        student, _ = zskt_models.load_model(teacher_file)
        with torch.no_grad():
            for p in student.parameters():
                p.add_(noise * torch.randn_like(p))
        torch.save(zskt_models.model_checkpoint(student, "wrn-10-1", "shapes",
                                                *zskt.MEAN_STD["shapes"]), tmp_path / f"{name}.pt")
    zskt_run.main(["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
                   str(tmp_path / "zs.pt"), str(tmp_path / "kd.pt"), "--images", "4", "--steps",
                   "3", "--out", str(tmp_path / "curves")])
    mte = json.loads((tmp_path / "curves" / "mte.json").read_text())["mte"]
    assert mte["zs"] == 0.0 and mte["kd"] > 0  # a network against itself: MTE 0
    for name in ("zs", "kd"):
        with np.load(tmp_path / "curves" / name / "curves.npz") as f:
            assert f["p_stepped"].shape == (4, 9, 3)
            assert mte[name] == pytest.approx(np.abs(f["p_stepped"] - f["p_observed"]).mean(),
                                              rel=1e-6)
    assert (tmp_path / "curves" / "transition.png").is_file()


def test_curves_names_and_bad_input(tmp_path, teacher_file, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(teacher_file, tmp_path / d / "student.pt")
    students = [str(tmp_path / d / "student.pt") for d in "ab"]
    base = ["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint", *students,
            "--images", "2", "--steps", "2", "--out", str(tmp_path / "c")]
    zskt_run.main(base)
    assert set(json.loads((tmp_path / "c" / "mte.json").read_text())["mte"]) == \
        {"a-student", "b-student"}
    for flags, message in [([], "already holds files"), (["--names", "x"], "gives 1 names for 2"),
                           (["--names", "x", "x"], "distinct names"),
                           (["--names", "x", "y/z"], "distinct names"),
                           (["--images", "0"], "--images must be at least 1"),
                           (["--images", "-1"], "at least 1"),
                           (["--steps", "0"], "--steps must be at least 1"),
                           (["--step-size", "nan"], "positive")]:
        code, err = run_main(base + flags, capsys)
        assert code == 2 and message in err, (flags, err)
    zskt_run.main(base + ["--overwrite", "--names", "zero-shot", "KD+AT"])
    names = set(json.loads((tmp_path / "c" / "mte.json").read_text())["mte"])
    assert names == {"zero-shot", "KD+AT"}


def test_an_interrupted_curves_run_is_started_again_by_the_same_command(tmp_path, teacher_file,
                                                                        monkeypatch, capsys):
    command = ["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
               str(teacher_file), "--images", "3", "--steps", "2", "--out", str(tmp_path / "c")]
    interrupt_at(monkeypatch, zskt, "trajectory", 2)  # Ctrl-C in the curves (1: the estimate)
    with pytest.raises(KeyboardInterrupt):
        zskt_run.main(command)
    monkeypatch.undo()
    assert not (tmp_path / "c" / "mte.json").exists()
    zskt_run.main(command)  # the same command: it starts again instead of refusing
    assert "holds an interrupted curves run; starting it again" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "mte.json").read_text())["mte"] == {"teacher": 0.0}
    code, err = run_main(command, capsys)  # a finished one is still protected
    assert code == 2 and "already holds files; pass --overwrite" in err


def test_a_model_file_from_the_checkpoint_after_loading_keeps_its_weights(tmp_path):
    torch.manual_seed(0)
    net = zskt.wrn("wrn-10-1", 3)
    path = tmp_path / "m.pt"
    torch.save(zskt_models.model_checkpoint(net, "wrn-10-1", "folder", (.5,) * 3, (.2,) * 3, 16),
               path)
    loaded, meta = zskt_models.load_model(path)
    assert meta["num_classes"] == 3 and meta["image_size"] == 16 and meta["std"] == [.2] * 3
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in net.state_dict().items())
    assert load_checkpoint(path)["arch"] == "wrn-10-1"
