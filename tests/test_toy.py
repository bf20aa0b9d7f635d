"""Tests of toy.py, the paper's 2-D toy experiment (Figure 1): its data, Algorithm 1 with free
pseudo points, and the command line."""
import json
import subprocess
import sys

import pytest
import torch

import toy
import zskt
from helpers import HERE, text_outside
from zskt_utils import UserError


@pytest.fixture(scope="module")
def toy_data():
    return toy.make_data(0)


@pytest.fixture(scope="module")
def toy_teacher(toy_data):
    torch.manual_seed(0)
    x_train, y_train, _, _ = toy_data
    return toy.train_teacher(toy.mlp(), x_train, y_train, epochs=3)


def toy_kl(teacher, student, x):
    with torch.no_grad():
        return zskt.kl_divergence(student(x), teacher(x)).item()


def toy_weights(model):
    return [p.detach().clone() for p in model.parameters()]


# toy: toy_data

def test_toy_data_has_the_blob_structure(toy_data):
    x_train, y_train, x_test, y_test = toy_data
    x, y = torch.cat([x_train, x_test]).double(), torch.cat([y_train, y_test])
    assert len(x_test) == round(0.3 * len(x))  # 70/30 split
    counts = torch.bincount(y, minlength=3).tolist()
    assert counts[1] == counts[2] == 2000  # a horizontal blob and a tight blob of 1000 points each
    assert 1200 < counts[0] < 1800  # two blobs of 1000 minus their holes (about a quarter of each)
    for centre, tight_class in (((0.0, 1.0), 1), ((0.0, -1.0), 2)):
        near = (x - torch.tensor(centre, dtype=x.dtype)).norm(dim=1) < 0.3
        assert not (near & (y == 0)).any(), "class 0 has a point inside its hole"
        tight = x[near & (y == tight_class)]
        assert 990 <= len(tight) <= 1010  # the tight blob sits in the hole
        assert 0.055 < tight.std(0).mean().item() < 0.065  # std 0.3 / 5
        assert abs(tight.mean(0) - torch.tensor(centre, dtype=x.dtype)).max() < 0.01
    # The horizontal blobs are elongated along x, the vertical (class 0) ones along y.
    left = x[(y == 1) & (x[:, 0] < -0.3)]
    assert abs(left.mean(0) - torch.tensor([-1.0, 0.0], dtype=x.dtype)).max() < 0.05
    assert left.std(0)[0] > left.std(0)[1]
    assert x[y == 0].std(0)[1] > x[y == 0].std(0)[0]


def test_toy_data_is_seeded_and_train_test_disjoint(toy_data):
    again = toy.make_data(0)
    assert all(torch.equal(a, b) for a, b in zip(toy_data, again))
    assert not torch.equal(toy.make_data(1)[0], toy_data[0])
    x_train, _, x_test, _ = toy_data
    rows = {tuple(r) for r in x_train.tolist()}
    assert not any(tuple(r) in rows for r in x_test.tolist())


# toy: pseudo points and Algorithm 1's two steps

def test_pseudo_points_stay_in_the_square_by_construction():
    raw = torch.tensor([[-1e6, 1e6], [-10.0, 10.0], [0.0, 0.0], [3.0, -3.0]])
    x = toy.to_input(raw)
    assert x.min() >= -3 and x.max() <= 3  # float32 sigmoid saturates to exactly 0 or 1 far out
    assert torch.equal(x[2], torch.zeros(2)) and (x[1:].abs() < 3).all()
    assert torch.allclose(x[3], torch.tensor([2.7154, -2.7154]), atol=1e-4)  # where points start


def test_pseudo_point_steps_increase_the_kl_and_move_only_the_points(toy_teacher):
    teacher = toy_teacher
    torch.manual_seed(1)
    student = toy.mlp()
    raw = torch.randn(50, 2, requires_grad=True)
    t0, s0 = toy_weights(teacher), toy_weights(student)
    before = toy_kl(teacher, student, toy.to_input(raw))
    toy.pseudo_point_steps(teacher, student, raw, torch.optim.Adam([raw], lr=1e-2), n_g=10)
    after = toy_kl(teacher, student, toy.to_input(raw))
    assert after > before * 1.05, (before, after)  # the adversarial step ascends KL(T || S)
    after = toy_weights(teacher) + toy_weights(student)
    assert all(torch.equal(a, b) for a, b in zip(t0 + s0, after))


def test_student_steps_decrease_the_kl_and_change_only_the_student(toy_teacher):
    teacher = toy_teacher
    torch.manual_seed(2)
    student = toy.mlp()
    x = toy.to_input(torch.randn(50, 2))
    x0, t0, s0 = x.clone(), toy_weights(teacher), toy_weights(student)
    before = toy_kl(teacher, student, x)
    toy.student_steps(teacher, student, x, torch.optim.Adam(student.parameters(), lr=1e-3), n_s=10)
    assert toy_kl(teacher, student, x) < 0.9 * before
    assert torch.equal(x, x0)
    assert all(torch.equal(a, b) for a, b in zip(t0, toy_weights(teacher)))
    assert all(not torch.equal(a, b) for a, b in zip(s0, toy_weights(student)))


def test_pseudo_point_step_uses_gradients_clamped_to_3(toy_teacher):
    teacher = toy_teacher
    torch.manual_seed(3)
    student = toy.mlp()
    with torch.no_grad():
        student[-1].weight.mul_(1e5)  # a very confident student: huge input gradients
    raw = torch.randn(50, 2, requires_grad=True)
    x = toy.to_input(raw)
    (g,) = torch.autograd.grad(zskt.generator_loss(student(x), teacher(x)), [raw])
    assert g.abs().max() > 30, "the test needs gradients well beyond the clamp"
    opt = torch.optim.Adam([raw], lr=1e-3, betas=(0.9, 0.999))
    toy.pseudo_point_steps(teacher, student, raw, opt, n_g=1)
    # After one step Adam's moments are (1 - beta1) g and (1 - beta2) g^2 of the gradient it used.
    clamped = g.clamp(-3, 3)
    assert torch.allclose(opt.state[raw]["exp_avg"], 0.1 * clamped, rtol=1e-4, atol=1e-7)
    assert torch.allclose(opt.state[raw]["exp_avg_sq"], 1e-3 * clamped ** 2, rtol=1e-4, atol=1e-9)


def test_student_step_clips_the_gradient_norm_to_3(toy_teacher):
    teacher = toy_teacher
    torch.manual_seed(5)
    student = toy.mlp()
    with torch.no_grad():
        student[-1].weight.mul_(1e3)
    x = toy.to_input(torch.randn(50, 2))
    with torch.no_grad():
        t_logits = teacher(x)
    loss = zskt.kl_divergence(student(x), t_logits)
    grads = torch.autograd.grad(loss, list(student.parameters()))
    assert torch.cat([g.flatten() for g in grads]).norm() > 30
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    toy.student_steps(teacher, student, x, opt, n_s=1)
    used = torch.cat([opt.state[p]["exp_avg"].flatten() for p in student.parameters()]) / 0.1
    assert abs(used.norm().item() - 3) < 1e-3


def test_trajectory_shape_bounds_and_determinism(toy_teacher):
    teacher = toy_teacher
    def run():
        torch.manual_seed(4)
        student = toy.mlp()
        traj, snaps = toy.train_student_on_pseudo_points(
            teacher, student, points=7, epochs=6, n_g=3, n_s=2, snapshot_every=3,
            grid=toy.make_grid(10, "cpu"))
        return traj, snaps, toy_weights(student)
    traj, snaps, params = run()
    assert traj.shape == (7, 7, 2)
    assert (traj.abs() < 3).all()
    assert (traj[0].median(0).values > 2).all()  # near the (3, 3) corner, away from the data
    assert not torch.equal(traj[0], traj[-1])
    assert [e for e, _ in snaps] == [0, 3, 6] and snaps[0][1].shape == (100, 3)
    traj2, _, params2 = run()
    assert torch.equal(traj, traj2) and all(torch.equal(a, b) for a, b in zip(params, params2))


def test_short_run_transfers_the_teacher_to_the_student(toy_teacher, toy_data):
    """60 epochs with faster points (the paper's 2000 take minutes): the student, which never saw
    the data, classifies the real test points far above chance (0.37 for the largest class)."""
    teacher = toy_teacher
    _, _, x_test, y_test = toy_data
    torch.manual_seed(0)
    student = toy.mlp()
    untrained = (toy.probabilities(student, x_test).argmax(1) == y_test).float().mean().item()
    toy.train_student_on_pseudo_points(teacher, student, points=50, epochs=60, n_g=20, n_s=10,
                                       lr_points=3e-2)
    s_pred = toy.probabilities(student, x_test).argmax(1)
    t_pred = toy.probabilities(teacher, x_test).argmax(1)
    acc = (s_pred == y_test).float().mean().item()
    assert acc > 0.65 and acc > untrained + 0.2, (untrained, acc)
    assert (s_pred == t_pred).float().mean().item() > 0.65


# toy: end to end

def test_toy_cli_writes_figure_json_and_gif(tmp_path):
    argv = ["--epochs", "4", "--n-g", "2", "--n-s", "2", "--points", "5", "--teacher-epochs", "2",
            "--device", "cpu", "--out", str(tmp_path)]
    result = toy.main(argv)
    from PIL import Image  # matplotlib is a dependency of toy.py's plot, Pillow of matplotlib
    with Image.open(tmp_path / "toy.png") as im:
        assert im.width > 600 and im.height > 300
    with Image.open(tmp_path / "toy.gif") as im:
        assert im.n_frames == 5  # epochs 0..4, one snapshot each
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["settings"] == {"n_g": 2, "n_s": 2, "points": 5, "epochs": 4, "seed": 0,
                                 "teacher_epochs": 2,
                                 "device": "cpu"}
    assert 0.8 < saved["teacher_test_acc"] <= 1
    assert saved["student_test_acc"] == result["student_test_acc"] and saved["n_test"] > 1000
    assert saved["agreement"] == result["agreement"]
    again = toy.main(argv[:-1] + [str(tmp_path / "again"), "--no-gif"])
    assert not (tmp_path / "again" / "toy.gif").exists()
    assert {k: again[k] for k in ("teacher_test_acc", "student_test_acc", "agreement")} == \
        {k: result[k] for k in ("teacher_test_acc", "student_test_acc", "agreement")}


def test_toy_figure_titles_name_the_settings(tmp_path, monkeypatch):
    """toy.png's title names n_G and n_S, and the seed and the teacher's epochs where they are
    not the defaults: --n-g 5 and the default give different titles, each inside the figure."""
    from matplotlib.figure import Figure
    titles, save = [], Figure.savefig

    def record(fig, *args, **kwargs):
        titles.append(fig.get_suptitle())
        assert text_outside(fig) == []
        return save(fig, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", record)
    short = ["--epochs", "2", "--points", "3", "--teacher-epochs", "1", "--no-gif", "--device",
             "cpu"]
    toy.main([*short, "--n-g", "5", "--out", str(tmp_path / "a")])
    toy.main([*short, "--n-s", "1", "--seed", "2", "--out", str(tmp_path / "b")])
    assert "3 pseudo points, 2 epochs, n_G = 5, n_S = 10, teacher trained 1 epoch" in titles[0]
    assert "n_G = 50, n_S = 1, seed 2, teacher trained 1 epoch" in titles[1]
    default = toy.figure_title(toy.parse_args([]))
    assert default.endswith(": 50 pseudo points, 2000 epochs, n_G = 50, n_S = 10")


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--points", "0"], ["--n-g", "-1"],
                                  ["--teacher-epochs", "0"], ["--seed", "-1"]])
def test_toy_bad_input_is_a_user_error(argv, tmp_path):
    with pytest.raises(UserError):
        toy.main(argv + ["--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_toy_bad_input_exits_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(HERE / "toy.py"), "--points", "0", "--out",
                        str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: --points")
    assert not (tmp_path / "x").exists()




def test_toy_shows_its_progress_in_a_log(tmp_path):
    r = subprocess.run([sys.executable, str(HERE / "toy.py"), "--epochs", "3", "--points", "5",
                        "--teacher-epochs", "1", "--no-gif", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("toy: Algorithm 1")]
    assert lines and lines[-1].startswith("toy: Algorithm 1 with free points 3/3 | ")
    assert "epoch/s" in lines[-1]
