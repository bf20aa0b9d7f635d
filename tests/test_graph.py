"""zskt_graph.py, the outer iteration of Algorithm 1 made replayable as one CUDA graph, checked
where a CPU can check it: the same iterations as zskt.algorithm_1 in float64 (with the CPU's Adam,
and with the capturable Adam arithmetic that CUDA replays), tensor learning rates equal to float
ones, static outputs, the capture's order, no value read back to the host, checkpoints that
either path resumes; and `benchmark.py gpu`, the script a GPU session runs, run through on the
CPU. The capture itself needs CUDA: benchmark.py gpu checks it there."""
import importlib
import io
import json
import math
import re

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import benchmark
import zskt
import zskt_graph
from helpers import HERE
from zskt_utils import UserError, rng_state, set_rng_state


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def cuda_arithmetic(monkeypatch):
    """Adam's capturable path on the CPU, where torch refuses it only by a device check: the
    arithmetic (step counts and bias corrections as tensors, foreach) that CUDA graphs replay."""
    adam = importlib.import_module("torch.optim.adam")
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda *a, **k: ["cpu"])
    monkeypatch.setattr(zskt_graph, "CAPTURABLE", ("cuda", "cpu"))


def tiny(**overrides):
    return zskt.Config(**{**dict(batch_size=4, z_dim=8, n_g=2, n_s=3, iterations=5), **overrides})


def networks(cfg):
    """Teacher, student, generator (WRN-10-1s, 16x16 pseudo images) and zskt.optimizers, seeded."""
    torch.manual_seed(0)
    teacher = zskt.wrn("wrn-10-1").eval().requires_grad_(False)
    student, generator = zskt.wrn("wrn-10-1"), zskt.Generator(cfg.z_dim, 16)
    return teacher, student, generator, zskt.optimizers(student, generator, cfg)


def run(loop, cfg, stop=None, **kwargs):
    """(student, generator, optimizers, each iteration's statistics) of `loop` from seed 0,
    stopped after iteration `stop` (default: the end)."""
    teacher, student, generator, opts = networks(cfg)
    torch.manual_seed(1)
    outs = []
    for iteration, out in loop(teacher, student, generator, opts, cfg, **kwargs):
        outs.append({k: v.clone() for k, v in out.items()})
        if iteration == stop:
            break
    return student, generator, opts, outs


def assert_same_run(a, b, rtol):
    """Weights and BatchNorm statistics, Adam's moments and step counts, learning rates and every
    iteration's statistics of two runs agree to rtol."""
    def close(x, y):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * 1e-2, equal_nan=True)
    for net_a, net_b in zip(a[:2], b[:2]):
        for x, y in zip(net_a.state_dict().values(), net_b.state_dict().values()):
            close(x.double(), y.double())
    for opt_a, opt_b in zip(a[2][:2], b[2][:2]):
        assert float(opt_a.param_groups[0]["lr"]) == pytest.approx(opt_b.param_groups[0]["lr"],
                                                                    rel=1e-15, abs=1e-18)
        for p_a, p_b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
            s_a, s_b = opt_a.state[p_a], opt_b.state[p_b]
            assert float(s_a["step"]) == float(s_b["step"])
            close(s_a["exp_avg"], s_b["exp_avg"])
            close(s_a["exp_avg_sq"], s_b["exp_avg_sq"])
    assert len(a[3]) == len(b[3])
    for out_a, out_b in zip(a[3], b[3]):
        for k in out_b:
            close(out_a[k], out_b[k])


# --- learning rates ------------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(steps=st.integers(1, 120), lr=st.floats(1e-6, 1.0), cut=st.integers(0, 120))
def test_tensor_learning_rates_follow_the_cosine_schedule_exactly(steps, lr, cut):
    """graph_ready's float64 tensor learning rates, filled in place by torch's CosineAnnealingLR,
    equal the float ones at every step of a whole schedule, across a state_dict round trip at
    step `cut` (through portable, torch.save and a weights-only load); both follow the closed
    form lr (1 + cos(pi t / T)) / 2."""
    cfg = zskt.Config(lr_student=lr, lr_generator=lr / 3, iterations=steps)

    def optimizers():
        return zskt.optimizers(nn.Linear(1, 1), nn.Linear(1, 1), cfg)
    plain, ready = optimizers(), zskt_graph.graph_ready(optimizers())
    rates = [ready.student.param_groups[0]["lr"], ready.generator.param_groups[0]["lr"]]
    for t in range(1, steps + 1):
        if t == min(cut, steps):
            saved = io.BytesIO()
            torch.save({k: zskt_graph.portable(v.state_dict()) for k, v in
                        ready._asdict().items()}, saved)
            saved.seek(0)
            loaded = torch.load(saved, weights_only=True)
            lr_saved = loaded["student"]["param_groups"][0]["lr"]
            assert lr_saved == plain.student.param_groups[0]["lr"]
            ready = optimizers()
            for k, v in ready._asdict().items():
                v.load_state_dict(loaded[k])
            zskt_graph.graph_ready(ready)
            rates = [ready.student.param_groups[0]["lr"], ready.generator.param_groups[0]["lr"]]
        for opts in (plain, ready):
            opts.student.step()  # no gradients: nothing moves, as torch wants before a schedule
            opts.generator.step()
            opts.student_schedule.step()
            opts.generator_schedule.step()
        for opt, rate in zip(ready[:2], rates):
            assert opt.param_groups[0]["lr"] is rate  # filled in place: a graph reads this one
        for got, want, base in zip(ready[:2], plain[:2], (lr, lr / 3)):
            assert got.param_groups[0]["lr"].dtype == torch.float64
            assert got.param_groups[0]["lr"].item() == want.param_groups[0]["lr"]
            closed = base * (1 + math.cos(math.pi * t / steps)) / 2
            assert want.param_groups[0]["lr"] == pytest.approx(closed, rel=1e-9, abs=1e-15)
        assert [float(v) for v in ready.student_schedule.get_last_lr()] == \
            plain.student_schedule.get_last_lr()


# --- the iteration -------------------------------------------------------------------------------

@pytest.mark.parametrize("arithmetic", ["cpu", "cuda"])
def test_graph_ready_iterations_equal_zero_shot_iterations_in_float64(arithmetic, request,
                                                                        float64):
    """Five iterations with n_g = 2 and n_s = 3, the schedules annealed to 0: two uncaptured, the
    'captured' third and two replays equal zskt.algorithm_1's in weights, BatchNorm statistics,
    Adam's moments and steps, learning rates and statistics. 'cuda' runs the capturable Adam
    arithmetic that CUDA replays (its bias corrections round differently: 1e-10)."""
    if arithmetic == "cuda":
        request.getfixturevalue("cuda_arithmetic")
    cfg = tiny()
    eager = run(zskt.algorithm_1, cfg)
    graphed = run(zskt_graph.algorithm_1, cfg, capture=False, warmup=2)
    assert graphed[2].student.param_groups[0]["capturable"] == (arithmetic == "cuda")
    assert_same_run(graphed, eager, rtol=0 if arithmetic == "cpu" else 1e-10)
    assert eager[2].student.param_groups[0]["lr"] == 0  # the whole schedule ran


def test_amp_runs_inside_the_graph_ready_iteration():
    """bf16 autocast inside: the same as zskt.py's --amp iterations (float32 networks)."""
    cfg = tiny(amp=True, iterations=4)
    assert_same_run(run(zskt_graph.algorithm_1, cfg, capture=False, warmup=2),
                    run(zskt.algorithm_1, cfg), rtol=1e-5)


def test_the_statistics_are_static_tensors_overwritten_each_iteration():
    teacher, student, generator, opts = networks(tiny())
    seen, values = set(), []
    for _, out in zskt_graph.algorithm_1(teacher, student, generator, opts, tiny(),
                                         capture=False, warmup=2):
        seen.add((id(out), *(v.data_ptr() for v in out.values())))
        values.append(out["loss_student"].item())
    assert len(seen) == 1 and len(set(values)) == len(values) == 5


class Recorder(zskt_graph.Eager):
    """Eager's capture (records, runs nothing) with a log of what GraphedIteration asked for."""

    def __init__(self, params):
        self.params, self.log, self.grads_at_capture = params, [], None

    def warm_up(self):
        self.log.append("warm-up")
        return super().warm_up()

    def capture(self, fn):
        self.log.append("capture")
        self.grads_at_capture = [p.grad for p in self.params]

        def replay():
            self.log.append("replay")
            fn()
        return replay


def test_the_capture_follows_the_warm_up_and_runs_nothing(monkeypatch):
    """The first `warmup` calls run uncaptured (on the side stream on CUDA); the next captures,
    with every gradient released so that the graph makes its own, and replays at once: the
    capture is not an extra iteration. Every later call replays."""
    calls = []
    original = zskt.zero_shot_iteration
    monkeypatch.setattr(zskt, "zero_shot_iteration",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    teacher, student, generator, opts = networks(tiny())
    step = zskt_graph.GraphedIteration(teacher, student, generator, opts, tiny(), capture=False,
                                       warmup=3)
    step.backend = Recorder([*student.parameters(), *generator.parameters()])
    for _ in range(6):
        step()
    assert step.backend.log == ["warm-up"] * 3 + ["capture"] + ["replay"] * 3
    assert len(calls) == 6 and step.backend.grads_at_capture == [None] * len(step.backend.params)


def test_capture_refuses_a_device_without_cuda_in_one_sentence():
    teacher, student, generator, opts = networks(tiny())
    for make in (zskt_graph.GraphedIteration, zskt_graph.algorithm_1):
        with pytest.raises(UserError) as e:
            make(teacher, student, generator, opts, tiny())
        message = str(e.value)
        assert "CUDA" in message and "cpu" in message and "\n" not in message
        assert message.count(". ") == 0 and not message.endswith(".")
    with pytest.raises(UserError, match="on cpu; drop --cuda-graph$"):
        zskt_graph.require_cuda(torch.device("cpu"), hint="drop --cuda-graph")
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        zskt_graph.GraphedIteration(teacher, student, generator, opts, tiny(), False, warmup=0)


class HostReads(TorchDispatchMode):
    """Records every operation that copies a tensor's value to the host (.item(), bool(t),
    float(t) and Python control flow on tensors all end in aten._local_scalar_dense): inside a
    CUDA graph capture each one is an error."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


def test_iterations_and_schedules_never_read_a_value_back(cuda_arithmetic):
    """With the capturable Adam of CUDA, whole iterations (clipping, Adam, the statistics) and
    the schedule steps between them read nothing back to the host: they can be captured."""
    teacher, student, generator, opts = networks(tiny())
    loop = zskt_graph.algorithm_1(teacher, student, generator, opts, tiny(), capture=False)
    with HostReads() as mode:
        torch.ones(1).item()  # seen: the mode would notice a read
        assert len(mode.reads) == 1
        for _ in loop:
            pass
    assert len(mode.reads) == 1


# --- checkpoints ---------------------------------------------------------------------------------

def test_checkpoints_of_either_path_resume_on_either_path(cuda_arithmetic, float64):
    """Stopped after 2 of 5 iterations, a graph-ready run saves (portable, torch.save, a
    weights-only load) what an eager run saves; continued on the graph-ready path (captured
    again, after one uncaptured iteration) or on the eager one, it ends where an uninterrupted
    eager run ends."""
    cfg = tiny()
    eager = run(zskt.algorithm_1, cfg)
    student, generator, opts, outs = run(zskt_graph.algorithm_1, cfg, stop=2, capture=False)
    saved = io.BytesIO()
    torch.save({"student_net": student.state_dict(), "generator_net": generator.state_dict(),
                **{k: zskt_graph.portable(v.state_dict()) for k, v in opts._asdict().items()},
                "rng": rng_state()}, saved)
    assert isinstance(opts.student.param_groups[0]["lr"], torch.Tensor)  # the live one stays
    assert opts.student.param_groups[0]["capturable"]
    for loop, kwargs in ((zskt_graph.algorithm_1, dict(capture=False, warmup=1)),
                         (zskt.algorithm_1, {})):
        saved.seek(0)
        state = torch.load(saved, weights_only=True)
        group = state["student"]["param_groups"][0]
        assert (type(group["lr"]), group["capturable"], group["foreach"]) == (float, False, None)
        assert all(s["step"].device.type == "cpu" for s in state["student"]["state"].values())
        teacher, student, generator, opts = networks(cfg)
        student.load_state_dict(state["student_net"])
        generator.load_state_dict(state["generator_net"])
        for k, v in opts._asdict().items():
            v.load_state_dict(state[k])
        set_rng_state(state["rng"])
        rest = [{k: v.clone() for k, v in out.items()}
                for _, out in loop(teacher, student, generator, opts, cfg, first=3, **kwargs)]
        assert_same_run((student, generator, opts, outs + rest), eager, rtol=1e-10)


def test_portable_leaves_model_state_dicts_and_eager_ones_as_they_are():
    opts = zskt.optimizers(nn.Linear(1, 1), nn.Linear(1, 1), zskt.Config())
    weights = nn.Linear(1, 1).state_dict()
    assert zskt_graph.portable(weights) is weights
    for part in opts:
        assert zskt_graph.portable(part.state_dict()) == part.state_dict()


# --- benchmark.py gpu on the CPU -----------------------------------------------------------------

TINY_GPU = ["gpu", "--device", "cpu", "--tiny", "--pairs", "wrn-10-1:wrn-10-1", "--batch-size",
            "2", "--n-s", "1", "--image-size", "16", "--budget-s", "0"]


def test_the_gpu_script_runs_through_on_the_cpu_and_fails_soft(tmp_path, monkeypatch, capsys):
    """Every part that can run on a CPU does (the graph variants uncaptured); a variant that
    fails is recorded and the rest goes on; the JSON has the issue's fields; the equality check
    finds the graph path (uncaptured on a CPU, with the CPU's Adam) equal to the eager one."""
    original = benchmark.outer_loop

    def eager_amp_breaks(variant, *a):
        if variant == "eager amp":
            raise RuntimeError("made to fail")
        return original(variant, *a)
    monkeypatch.setattr(benchmark, "outer_loop", eager_amp_breaks)
    json_path, md = tmp_path / "docs" / "b.json", tmp_path / "benchmark-gpu.md"
    benchmark.main([*TINY_GPU, "--json", str(json_path), "--out", str(md)])
    data = json.loads(json_path.read_text())
    assert {"device", "torch", "cuda", "command", "rows", "equality"} <= set(data)
    assert data["command"].startswith("python benchmark.py gpu --device cpu") and data["finished"]
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["eager fp32", "eager amp", "author fp32", "graph fp32", "graph amp"]
    assert all(r["pair"] == "wrn-10-1:wrn-10-1" for r in data["rows"])
    assert rows["eager amp"]["ms"] is None  # its count and its timing failed, and are recorded
    assert [e.split(": ")[0] for e in data["errors"]] == ["wrn-10-1:wrn-10-1 eager amp counts",
                                                           "wrn-10-1:wrn-10-1 eager amp"]
    assert rows["graph amp"]["ms"] > 0 and "floor_ms" not in rows["graph amp"]  # no count
    for name in ("graph fp32", "eager fp32", "author fp32"):
        assert rows[name]["ms"] > 0 and rows[name]["floor_ms"] > 0
        assert rows[name]["floor_bound"] in ("FLOPs", "bytes")
    work = data["work"]["wrn-10-1:wrn-10-1"]
    assert work["author fp32"]["gflop"] > work["eager fp32"]["gflop"] > 0  # the author's: more
    eq = data["equality"]
    assert eq["graph_vs_eager"] == eq["graph_vs_uncaptured"] == {
        "student_after_1": 0.0, "generator_after_1": 0.0, "student_after_2": 0.0,
        "generator_after_2": 0.0, "loss_generator_max_rel": 0.0, "loss_student_max_rel": 0.0}
    assert 0 < eq["nudged_vs_eager"]["student_after_1"] < 1e-2  # one rounding step grows
    assert eq["lr_schedule_max_abs_diff"] == 0.0
    printed = capsys.readouterr().out
    table = printed[printed.index("| pair | variant |"):]
    assert "| wrn-10-1 → wrn-10-1 | eager amp | failed |" in table
    assert "| graphed vs eager | 0.0e+00 / 0.0e+00 |" in table
    assert table.split("\n\n")[0] in md.read_text()


def test_the_equality_check_sees_a_graph_path_that_differs(monkeypatch):
    """benchmark.py's equality (1) against replays that nudge a weight of the student by 1e-6 of
    itself: the graphed run differs from the eager one and from the uncaptured one (whose first
    iterations are its warm-up) after 1 iteration, and more after 2; the nudged eager control
    differs too."""
    original = zskt_graph.GraphedIteration.iteration

    def nudged(self):
        out = original(self)
        if self.replay is not None:  # a replay, not a warm-up iteration
            with torch.no_grad():
                self.nets[1].conv1.weight.mul_(1 + 1e-6)
        return out
    monkeypatch.setattr(zskt_graph.GraphedIteration, "iteration", nudged)
    args = benchmark.parse_args(TINY_GPU)
    eq = benchmark.equality(args.pairs[0], args, "cpu", 2)
    for key in ("graph_vs_eager", "graph_vs_uncaptured"):
        d = eq[key]
        assert 0 < d["student_after_1"] < d["student_after_2"] < 1e-2, key
        assert d["loss_student_max_rel"] > 0, key
    assert eq["nudged_vs_eager"]["student_after_1"] > 0


def test_the_gpu_script_keeps_what_it_measured_when_stopped(tmp_path, monkeypatch):
    """The device may stop the script at any time: each row is on disk as soon as it is
    measured (here a stop arrives during the equality check, after five rows)."""
    monkeypatch.setattr(benchmark, "outer_loop", lambda *a: (lambda: None))
    monkeypatch.setattr(benchmark, "work", lambda *a: {"gflop": 1.0, "gbyte": 1.0, "aten_ops": 1})

    def stopped(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(benchmark, "equality", stopped)
    path = tmp_path / "b.json"
    with pytest.raises(KeyboardInterrupt):
        benchmark.main([*TINY_GPU, "--json", str(path), "--out",
                        str(tmp_path / "benchmark-gpu.md")])
    data = json.loads(path.read_text())
    assert len(data["rows"]) == 5 and not data["finished"] and data["equality"] is None


def test_floor_and_traffic_by_hand():
    """2 GFLOP at 1 TFLOP/s is 2 ms, 1 GB at 100 GB/s is 10 ms: the bytes bind. An add of two
    ten-element float32 tensors moves 3 x 40 bytes; a view moves none."""
    ceiling = {"fp32_flop_per_s": 1e12, "bf16_flop_per_s": 4e12, "copy_byte_per_s": 1e11}
    assert benchmark.floor_ms({"gflop": 2.0, "gbyte": 1.0}, False, ceiling) == (10.0, "bytes")
    assert benchmark.floor_ms({"gflop": 20.0, "gbyte": 1.0}, False, ceiling) == (20.0, "FLOPs")
    assert benchmark.floor_ms({"gflop": 20.0, "gbyte": 1.0}, True, ceiling) == (10.0, "bytes")
    a, b = torch.ones(10), torch.ones(10)
    with benchmark.Traffic() as traffic:
        (a + b).view(2, 5)
    assert (traffic.ops, traffic.bytes) == (2, 120)


def test_every_documented_benchmark_command_parses():
    """The `python benchmark.py ...` commands of README.md and docs/ parse with its parser."""
    docs = [HERE / "README.md", *sorted((HERE / "docs").glob("*.md"))]
    texts = [doc.read_text().replace("\\\n", " ") for doc in docs]  # continued lines joined
    commands = [c for text in texts for c in re.findall(r"python benchmark\.py([^\n`#|]*)", text)]
    assert any("gpu" in c for c in commands)
    for command in commands:
        benchmark.parse_args(command.split())
