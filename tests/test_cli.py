"""Tests of `python zskt.py` and `python zskt.py curves` as a user meets them: outputs, help, and
bad input answered by one sentence with exit status 2 (never a traceback, never lost work)."""
import argparse
import json
import re
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
import zskt_shapes
from helpers import (HERE, TINY, Pickled, author_files, folder_data, help_text, ignore_sigint,
                     interrupt_at, run_main, run_printed, save_network, signal_when_held,
                     tiny_config)
from zskt_utils import Stopped, UserError, load_checkpoint


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
    ("text", [], "is not a PyTorch checkpoint (it is a text file)"),
    ("temperature", ["--temperature", "0"], "--temperature must be a positive number, not 0.0"),
    ("temperature_negative", ["--temperature", "-1"], "--temperature must be a positive number"),
    ("mean_alone", ["--mean", ".5", ".5", ".5"], "--mean and --std go together"),
    ("std_zero", ["--mean", "0", "0", "0", "--std", "1", "0", "1"], "--std three positive ones"),
    ("mean_contradicts", ["--mean", ".1", ".1", ".1", "--std", ".2", ".2", ".2"],
     "stores its own normalisation (mean (0.5021, 0.5012, 0.5004), std (0.29, 0.2902, 0.2893)), "
     "which --mean/--std contradicts"),
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
    if case == "text":
        teacher_file.write_text("epoch,accuracy\n1,0.5\n")
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


def test_a_network_with_fewer_than_two_outputs_is_refused_in_one_sentence(tmp_path, capsys,
                                                                         shapes_test):
    torch.manual_seed(0)
    one = tmp_path / "one.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1", 1), "wrn-10-1", "shapes",
                                            *zskt.MEAN_STD["shapes"]), one)
    for command in (["--teacher-checkpoint", str(one), "--out", str(tmp_path / "r"), *TINY],
                    ["curves", "--teacher-checkpoint", str(one), "--student-checkpoint", str(one),
                     "--out", str(tmp_path / "r")]):
        code, err = run_main(command, capsys)
        assert code == 2 and "wrn-10-1) has 1 output, but zero-shot distillation" in err, err
        assert "\n" not in err and not (tmp_path / "r").exists()
    one_class = shapes_test._replace(classes=("only",))
    with pytest.raises(UserError, match="the teacher .WideResNet. has 1 output"):
        zskt_run.train_zero_shot(tiny_config(), zskt.wrn("wrn-10-1", 1), one_class, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    # The ETA's estimate has no curves to time for it, rather than dividing by zero.
    net = zskt.wrn("wrn-10-1", 1)
    assert zskt_run.curves_cost(net, net, one_class, tiny_config()).seconds() == 0


def test_a_teacher_file_s_own_normalisation_is_used(tmp_path, capsys):
    """Constants stored in the file win over the dataset's (shapes' differ from these)."""
    own = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1")
    torch.save(zskt_models.model_checkpoint(teacher, "wrn-10-1", "shapes", *own), tmp_path / "t.pt")
    zskt_run.main(["--teacher-checkpoint", str(tmp_path / "t.pt"), "--iterations", "1", "--out",
                   str(tmp_path / "r"), *TINY])
    x, y, _ = zskt.load_dataset("shapes", "test")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in own)
    with torch.no_grad():
        by_hand = (teacher.eval()((x.float() / 255 - mean) / std)[0].argmax(1) == y).float().mean()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["teacher_test_acc"] == pytest.approx(by_hand.item(), abs=1e-6)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    student = load_checkpoint(tmp_path / "r" / "student.pt")
    for saved in (config, student):
        assert saved["mean"] == pytest.approx(own[0]) and saved["std"] == pytest.approx(own[1])
    assert "normalisation" not in capsys.readouterr().out  # nothing to say: the file's own
    zskt_run.main(["curves", "--teacher-checkpoint", str(tmp_path / "t.pt"),
                   "--student-checkpoint", str(tmp_path / "r" / "student.pt"), "--images", "2",
                   "--steps", "2", "--out", str(tmp_path / "c")])
    assert json.loads((tmp_path / "c" / "mte.json").read_text())["std"] == pytest.approx(own[1])


def test_the_literature_s_teacher_runs_on_a_folder_with_the_constants_its_name_names(
        tmp_path, monkeypatch, capsys):
    """A user's own copy of CIFAR-10 as image files, and a weights-only cifar10_<arch>.pth: not
    refused for the dataset's name; CIFAR-10's constants, said in one line; kept by --resume."""
    folder_data(tmp_path / "pets")
    torch.manual_seed(0)
    torch.save({"state_dict": zskt.wrn("wrn-10-1", 3).state_dict()},
               tmp_path / "cifar10_wrn10_1.pth")
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 1)
    with pytest.raises(Stopped):
        zskt_run.main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"),
                       "--teacher-checkpoint", str(tmp_path / "cifar10_wrn10_1.pth"),
                       "--iterations", "2", "--out", str(tmp_path / "r"), *TINY])
    monkeypatch.undo()
    assert ("cifar10_wrn10_1.pth: normalisation mean (0.4914, 0.4822, 0.4465), std (0.2023, "
            "0.1994, 0.201) (the constants of cifar10, which cifar10_wrn10_1.pth names)"
            in capsys.readouterr().out)
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])
    student = load_checkpoint(tmp_path / "r" / "student.pt")
    assert (student["mean"], student["std"]) == tuple(map(list, zskt.MEAN_STD["cifar10"]))
    assert student["classes"] == ["blue", "green", "red"]


def test_a_file_that_names_no_dataset_takes_mean_and_std_from_the_flags(tmp_path, monkeypatch,
                                                                         capsys):
    folder_data(tmp_path / "pets")
    torch.manual_seed(0)
    torch.save(zskt.wrn("wrn-10-1", 3).state_dict(), tmp_path / "weights.pth")
    base = ["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--teacher-checkpoint",
            str(tmp_path / "weights.pth"), "--iterations", "2", "--out", str(tmp_path / "r"),
            *TINY]
    code, err = run_main(base, capsys)
    assert code == 2 and "--mean R G B --std R G B" in err and not (tmp_path / "r").exists()
    flags = ["--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.25"]
    interrupt_at(monkeypatch, zskt, "zero_shot_iteration", 1)
    with pytest.raises(Stopped):
        zskt_run.main([*base, *flags])
    monkeypatch.undo()
    assert "weights.pth: normalisation mean (0.5, 0.4, 0.3), std (0.2, 0.2, 0.25) (--mean/--std)" \
        in capsys.readouterr().out
    code, err = run_main(["--out", str(tmp_path / "r"), "--resume", "--mean", "0", "0", "0",
                          "--std", "1", "1", "1"], capsys)
    assert code == 2 and "mean=[0.5, 0.4, 0.3] (saved) vs [0.0, 0.0, 0.0] (given)" in err
    zskt_run.main(["--out", str(tmp_path / "r"), "--resume"])  # config.json has them
    student = load_checkpoint(tmp_path / "r" / "student.pt")
    assert (student["mean"], student["std"]) == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.25])


def test_a_network_trained_on_other_classes_is_refused_naming_both(tmp_path, capsys):
    folder_data(tmp_path / "pets")  # blue, green, red
    torch.manual_seed(0)
    other = tmp_path / "other.pt"
    torch.save(zskt_models.model_checkpoint(zskt.wrn("wrn-10-1", 3), "wrn-10-1", "folder",
                                            (.5,) * 3, (.2,) * 3, 16, classes=["a", "b", "c"]),
               other)
    base = ["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--teacher-checkpoint",
            str(other), "--iterations", "1", "--out", str(tmp_path / "r"), *TINY]
    code, err = run_main(base, capsys)
    assert code == 2 and f"{other} was trained on classes (a, b, c), but this run uses dataset " \
        f"folder (image size 16, classes (blue, green, red))" in err, err
    zskt_run.main([*base, "--allow-dataset-mismatch"])
    student = tmp_path / "r" / "student.pt"
    assert load_checkpoint(student)["classes"] == ["blue", "green", "red"]
    curves = ["curves", "--dataset", "folder", "--data-dir", str(tmp_path / "pets"),
              "--teacher-checkpoint", str(student), "--student-checkpoint", str(other),
              "--images", "2", "--steps", "2", "--out", str(tmp_path / "c")]
    code, err = run_main(curves, capsys)
    assert code == 2 and f"{other} was trained on classes (a, b, c)" in err
    zskt_run.main([*curves, "--allow-dataset-mismatch"])
    assert (tmp_path / "c" / "mte.json").is_file()


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


def test_an_interrupted_curves_run_prints_the_command_that_starts_it_again(
        tmp_path, teacher_file, monkeypatch, capsys, user_env):
    """With the default --out: the printed command names the --out it chose, and nothing of the
    interrupted run is left (no orphan directory)."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # relative paths, then another directory
    shutil.copy(teacher_file, "teacher.pt")
    command = ["curves", "--teacher-checkpoint", "teacher.pt", "--student-checkpoint",
               "teacher.pt", "--images", "3", "--steps", "2"]
    interrupt_at(monkeypatch, zskt, "trajectory", 2)  # Ctrl-C in the curves (1: the estimate)
    with pytest.raises(Stopped) as stopped:
        zskt_run.main(command)
    monkeypatch.undo()
    message = str(stopped.value)
    assert stopped.value.status == 130 and "SIGINT during the transition curves" in message
    printed = message.split("start them again with: ")[1]
    chosen = re.search(r"--out (\S+)$", printed)[1]
    assert re.fullmatch(str(tmp_path / "work" / "runs") + r"/curves-\d{8}-\d{6}", chosen)
    assert list((tmp_path / "work" / "runs").iterdir()) == []  # no orphan
    run_printed(printed, tmp_path / "elsewhere", user_env)
    saved = json.loads((Path(chosen) / "mte.json").read_text())
    assert saved["mte"] == {"teacher": 0.0} and saved["images"] == {"teacher": 3}
    assert sorted(p.name for p in Path(chosen).iterdir()) == ["mte.json", "teacher",
                                                              "transition.png"]  # no .lock


def test_an_interrupted_curves_run_in_an_existing_out_is_started_again_by_the_same_command(
        tmp_path, teacher_file, monkeypatch, capsys):
    command = ["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
               str(teacher_file), "--images", "3", "--steps", "2", "--out", str(tmp_path / "c")]
    zskt_run.main(command)
    interrupt_at(monkeypatch, zskt, "trajectory", 2)
    with pytest.raises(Stopped):  # --overwrite emptied it: an interrupted run is in it now
        zskt_run.main([*command, "--overwrite"])
    monkeypatch.undo()
    assert not (tmp_path / "c" / "mte.json").exists()
    capsys.readouterr()
    zskt_run.main(command)  # the same command without --overwrite: it starts again
    assert "holds an interrupted curves run; starting it again" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "mte.json").read_text())["mte"] == {"teacher": 0.0}
    code, err = run_main(command, capsys)  # a finished one is still protected
    assert code == 2 and "already holds files; pass --overwrite" in err


@pytest.mark.parametrize("hold,message", [
    (("zskt", "agreeing_images", 1), "interrupted"),  # loading: run_cli's handler
    (("zskt", "trajectory", 2), "SIGINT during the transition curves")])  # the curves' own
def test_curves_started_with_sigint_ignored_stop_on_sigint(hold, message, tmp_path, teacher_file):
    """A background job of a script starts with SIGINT ignored; `kill -INT` still stops it, as
    Ctrl-C stops a foreground one (run_cli)."""
    code, out, err = signal_when_held(
        hold, "zskt.py", ["curves", "--teacher-checkpoint", teacher_file, "--student-checkpoint",
                          teacher_file, "--images", "3", "--steps", "2", "--out",
                          tmp_path / "c"], signal.SIGINT, tmp_path, preexec_fn=ignore_sigint)
    assert code == 130 and err.strip().splitlines()[-1].startswith(message), err
    assert "Traceback" not in err and not (tmp_path / "c").exists()


def test_curves_into_an_existing_out_are_refused_before_anything_is_loaded(
        tmp_path, teacher_file, monkeypatch, capsys):
    command = ["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
               str(teacher_file), "--images", "2", "--steps", "2", "--out", str(tmp_path / "c")]
    zskt_run.main(command)
    monkeypatch.setattr(zskt_models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    code, err = run_main(command, capsys)
    assert code == 2 and "already holds files" in err
    code, err = run_main(["--teacher-checkpoint", str(teacher_file), "--out",
                          str(tmp_path / "c")], capsys)  # and zskt.py alike
    assert code == 2 and "already holds files; pass --resume" in err


def test_mte_json_records_absolute_resolved_paths(tmp_path, teacher_file, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    shutil.copy(teacher_file, "t.pt")
    zskt_run.main(["curves", "--teacher-checkpoint", "./t.pt", "--student-checkpoint",
                   "../work/t.pt", "--images", "2", "--steps", "2"])
    found, = (tmp_path / "work" / "runs").glob("curves-*/mte.json")
    saved = json.loads(found.read_text())
    t = str(tmp_path.resolve() / "work" / "t.pt")
    assert saved["teacher_checkpoint"] == t and saved["student_checkpoint"] == [t]
    assert saved["files"] == {"t": t} and saved["out"] == str(found.parent.resolve())
    assert saved["data_dir"] == str(tmp_path.resolve() / "work" / "data")
    assert saved["mean"] == pytest.approx(zskt.MEAN_STD["shapes"][0])  # the file's own


def test_curves_use_the_targets_asked_for(tmp_path, teacher_file, shapes_test):
    """--mte-targets predicted skips the class both networks predict, label the true label:
    the curves written equal Algorithm 2 computed with those targets (a random teacher predicts
    other classes than the labels, so the two differ)."""
    torch.manual_seed(1)
    student, _ = zskt_models.load_model(teacher_file)
    with torch.no_grad():
        for w in student.parameters():
            w.add_(0.01 * torch.randn_like(w))
    save_network(student, "wrn-10-1", tmp_path / "s.pt")
    teacher, _ = zskt_models.load_model(teacher_file)
    test = zskt.TestSet(*zskt.load_dataset("shapes", "test"), *zskt.MEAN_STD["shapes"])
    x, y, shared = zskt.agreeing_images(student, teacher, test, 4)
    assert (shared != y).any()
    for targets, labels in (("predicted", None), ("label", y)):
        zskt_run.main(["curves", "--teacher-checkpoint", str(teacher_file), "--student-checkpoint",
                       str(tmp_path / "s.pt"), "--images", "4", "--steps", "3", "--mte-targets",
                       targets, "--out", str(tmp_path / targets)])
        p_s, p_o = zskt.transition_curves(student, teacher, x, steps=3, labels=labels)
        with np.load(tmp_path / targets / "s" / "curves.npz") as f:
            assert np.allclose(f["p_stepped"], p_s.numpy(), atol=1e-6)
            assert np.allclose(f["p_observed"], p_o.numpy(), atol=1e-6)
        assert json.loads((tmp_path / targets / "mte.json").read_text())["mte_targets"] == targets
    with np.load(tmp_path / "label" / "s" / "curves.npz") as a, \
            np.load(tmp_path / "predicted" / "s" / "curves.npz") as b:
        assert not np.allclose(a["p_stepped"], b["p_stepped"])


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
