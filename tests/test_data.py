"""Tests of the data: the built-in shapes (zskt_shapes.py) and image folders (zskt.load_folder)."""
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
