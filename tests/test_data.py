"""Tests of the data: the built-in shapes (zskt_shapes.py), image folders (zskt.load_folder) and
torchvision's files (zskt.load_dataset)."""
import urllib.error
import urllib.request

import pytest
import torch

import train_teacher as tt
import zskt
import zskt_run
import zskt_shapes
from helpers import folder_data, run_main, save_network


def test_shapes_is_deterministic_balanced_and_split():
    x, y = zskt_shapes.make_shapes(200, seed=3)
    x2, y2 = zskt_shapes.make_shapes(200, seed=3)
    assert x.shape == (200, 3, 16, 16) and x.dtype == torch.uint8
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert zskt_shapes.make_shapes(10, seed=3, size=32)[0].shape == (10, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    assert not torch.equal(zskt_shapes.make_shapes(200, seed=4)[0], x)
    train, test = zskt_shapes.split("train"), zskt_shapes.split("test")
    assert len(train[0]) == 20_000 and len(test[0]) == 2_000 and test[2] == zskt_shapes.CLASSES


def test_shapes_classes_are_not_colour_separable():
    # Classes differ by shape or texture: a nearest-class-mean classifier on an image's mean
    # colour and brightness spread must stay near chance (10%).
    x, y = zskt_shapes.make_shapes(4000, seed=0)
    f = torch.cat([x.float().mean((2, 3)), x.float().std((2, 3))], 1)
    centres = torch.stack([f[:2000][y[:2000] == k].mean(0) for k in range(10)])
    acc = (torch.cdist(f[2000:], centres).argmin(1) == y[2000:]).float().mean()
    assert acc < 0.2


def test_folder_images_are_read_resized_and_labelled_by_folder(tmp_path):
    folder_data(tmp_path / "pets", size=20)
    x, y, classes = zskt.load_dataset("folder", "test", tmp_path / "pets", image_size=16)
    assert classes == ("blue", "green", "red") and x.shape == (12, 3, 16, 16)
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (x[y == 2][:, 0].float().mean() > 150).all()  # red images are red


def test_a_broken_image_is_named(tmp_path):
    folder_data(tmp_path / "pets")
    (tmp_path / "pets" / "test" / "red" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read the image .*broken.png"):
        zskt.load_dataset("folder", "test", tmp_path / "pets")


def test_an_empty_class_folder_is_refused_by_name(tmp_path, capsys):
    """A class without images would still get an output of the networks: refused, naming it."""
    folder_data(tmp_path / "pets", empty=("green",))
    with pytest.raises(FileNotFoundError, match=r"the class folder .*pets/train/green holds no "
                                                r"image; add images or remove the folder green"):
        zskt.load_dataset("folder", "train", tmp_path / "pets")
    code, err = run_main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--arch",
                          "wrn-10-1", "--samples-per-class", "2"], capsys, tt.main)
    assert code == 2 and "pets/train/green holds no image" in err
    teacher = save_network(zskt.wrn("wrn-10-1", 3), "wrn-10-1", tmp_path / "t.pt", "folder")
    code, err = run_main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"),
                          "--teacher-checkpoint", str(teacher), "--out", str(tmp_path / "r")],
                         capsys, zskt_run.main)
    assert code == 2 and "pets/test/green holds no image" in err
    assert not (tmp_path / "r").exists()


def test_a_folder_without_its_splits_says_what_it_needs(tmp_path):
    (tmp_path / "pets").mkdir()
    with pytest.raises(FileNotFoundError, match="--dataset folder needs images in"):
        zskt.load_dataset("folder", "train", tmp_path / "pets")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        zskt.load_dataset("mnist", "train")


def files_under(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_a_folder_with_one_class_is_refused_in_both_scripts(tmp_path, monkeypatch, capsys):
    """One class gives a network with one output: a loss of 0 and 100 % whatever it learns, then
    nothing to distil. Refused in one sentence, exit status 2, no directory left by either script
    (with their default --out, from the user's folder)."""
    folder_data(tmp_path / "pets")
    for split in ("train", "test"):
        for name in ("green", "blue"):
            for f in (tmp_path / "pets" / split / name).iterdir():
                f.unlink()
            (tmp_path / "pets" / split / name).rmdir()
    with pytest.raises(ValueError, match=r"--dataset folder needs at least two classes, but "
                                         r".*pets/train holds one class folder, red; add a folder "
                                         r"of images for each other class"):
        zskt.load_dataset("folder", "test", tmp_path / "pets")
    teacher = save_network(zskt.wrn("wrn-10-1", 2), "wrn-10-1", tmp_path / "t.pt", "folder")
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    for main, flags in ((tt.main, ["--arch", "wrn-10-1"]),
                        (zskt_run.main, ["--teacher-checkpoint", str(teacher)])):
        code, err = run_main(["--dataset", "folder", "--data-dir", "pets", *flags], capsys, main)
        assert code == 2 and "needs at least two classes" in err and len(err.splitlines()) == 1
        assert files_under(tmp_path) == before


def test_a_test_class_missing_from_train_is_refused_by_name(tmp_path, capsys):
    """train/{blue,green,red} and test/{blue,green,red,zebra}: the images of test/zebra would
    count for no class (the networks have outputs for train's classes only), so they would
    vanish from the accuracy; refused, naming the folder, before anything is trained."""
    folder_data(tmp_path / "pets")
    (tmp_path / "pets" / "test" / "zebra").mkdir()
    for f in (tmp_path / "pets" / "test" / "red").iterdir():
        (tmp_path / "pets" / "test" / "zebra" / f.name).write_bytes(f.read_bytes())
    assert len(zskt.load_dataset("folder", "train", tmp_path / "pets")[0]) == 24  # train is whole
    message = (f"{tmp_path / 'pets' / 'test' / 'zebra'}: no class folder of that name in "
               f"{tmp_path / 'pets' / 'train'}, so the networks have no output for its images; "
               f"add the class to {tmp_path / 'pets' / 'train'} or remove the folder from "
               f"{tmp_path / 'pets' / 'test'}")
    with pytest.raises(ValueError) as e:
        zskt.load_dataset("folder", "test", tmp_path / "pets")
    assert str(e.value) == message
    code, err = run_main(["--dataset", "folder", "--data-dir", str(tmp_path / "pets"), "--arch",
                          "wrn-10-1", "--out", str(tmp_path / "run")], capsys, tt.main)
    assert code == 2 and err == f"error: {message}" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("dataset,name", [
    ("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar10", "cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python/test"), ("svhn", "test_32x32.mat")])
def test_files_that_fail_the_checksum_are_called_corrupt_not_missing(tmp_path, monkeypatch,
                                                                     dataset, name):
    """A download cut short leaves a file of the right name and the wrong content: torchvision
    refuses it ("not found or corrupted") and, offline, cannot fetch it again. The user is told
    which file it is and to delete it, not that the data is missing."""
    def offline(*a, **k):  # every download of torchvision's goes through urlopen
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"the first bytes of a download that stopped")
    with pytest.raises(ValueError) as e:
        zskt.load_dataset(dataset, "test", tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / name} failed torchvision's checksum (corrupt or "
                              f"incomplete) and could not be downloaded again (")
    assert "delete it and run again to download it, or put a fresh " in message
    (tmp_path / name).unlink()  # without the file: missing
    with pytest.raises(FileNotFoundError, match=f"{dataset} is not in .* could not be downloaded"):
        zskt.load_dataset(dataset, "test", tmp_path)
