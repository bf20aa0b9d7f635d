"""The outer iteration of Algorithm 1 captured as one CUDA graph and replayed: what
zskt.zero_shot_iteration computes, with one launch per iteration instead of thousands.

Machinery beside the run module, like zskt_run.py: nothing here changes what the method computes.
The captured function is zskt.zero_shot_iteration itself (n_g generator steps, n_s student
steps, Adam, gradient clipping); what makes it replayable is around it:

- z is drawn inside the graph with torch.randn on the device's default generator, which torch's
  CUDA graphs support: each replay continues the generator's stream as an eager call would.
- Adam is capturable (its step counts and bias corrections stay on the device) and its learning
  rates are float64 tensors that the two CosineAnnealingLR schedules fill in place between
  replays (torch's LRScheduler fills a tensor lr instead of replacing it). A float64 tensor
  holds the float schedule's values exactly, so the rates equal the eager run's. Inside the
  iteration Adam reads copies of them in the parameters' dtype (see GraphedIteration.iteration).
- Gradient clipping (torch.nn.utils.clip_grad_norm_) never reads a value back to the host.
- The statistics (the dict zero_shot_iteration returns) are copied into static output tensors,
  the same tensors every iteration: read them before the next iteration overwrites them.
- The first WARMUP iterations run uncaptured, on a side stream: they create Adam's state and let
  cuDNN pick its kernels, as torch's notes on CUDA graphs ask ("CUDA Graphs" in PyTorch's CUDA
  semantics notes: warm up on a side stream, then capture the whole network with
  optimizer.step() inside). They are real iterations of the run, not extra ones; the capture
  itself computes nothing, and its first replay is the next iteration.

Checkpoints and --resume: load every state (networks, optimizers, schedules, RNG) into the plain
objects first, then call graph_ready and capture: the graph then reads and writes the loaded
tensors. A captured graph holds the tensors it was captured with, so loading a state dict into
an optimizer after the capture would leave the graph on the old tensors; capture again instead
(a new GraphedIteration). `portable` gives an optimizer's or a schedule's state_dict in the form
the eager path saves, so the checkpoints of both paths are the same files and either resumes
either.

On a CPU nothing is captured: GraphedIteration(capture=False) runs the same code eagerly, which
is how the tests check it against zskt.zero_shot_iteration.
"""
import contextlib

import torch

import zskt
from zskt_utils import UserError

WARMUP = 3  # uncaptured iterations before the capture, as in torch's whole-network example
CAPTURABLE = ("cuda",)  # devices on which Adam runs capturable (torch refuses it elsewhere)


def graph_ready(opts):
    """zskt.optimizers' two Adams made replayable, in place, their state kept: each learning rate
    becomes a float64 tensor on the parameters' device, and on CUDA Adam becomes capturable with
    its step counts on the device. Idempotent; returns opts."""
    for opt in (opts.student, opts.generator):
        device = opt.param_groups[0]["params"][0].device
        capturable = device.type in CAPTURABLE
        for group in opt.param_groups:
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(group["lr"], dtype=torch.float64, device=device)
            group["capturable"] = capturable
            # torch's choice on CUDA; uncaptured Adam takes a tensor lr only without foreach.
            group["foreach"] = capturable
        if capturable:
            for state in opt.state.values():
                state["step"] = state["step"].to(device)  # a loaded checkpoint keeps it on the CPU
            # torch warns when a capturable Adam steps uncaptured: the warm-up does, by design.
            opt._warned_capturable_if_run_uncaptured = True
    return opts


def portable(state_dict):
    """An optimizer's or a schedule's state_dict as the eager path saves it (float learning
    rates, Adam not capturable, step counts on the CPU); any other state dict as it is. Reading
    a tensor learning rate waits for the device: call it at checkpoint time only."""
    if "param_groups" in state_dict:  # an optimizer's
        groups = [{**g, "lr": float(g["lr"]), "capturable": False, "foreach": None}
                  for g in state_dict["param_groups"]]
        # New dicts: state_dict() hands out the optimizer's own per-parameter state.
        state = {k: {**s, "step": s["step"].cpu()} if "step" in s else s
                 for k, s in state_dict["state"].items()}
        return {**state_dict, "state": state, "param_groups": groups}
    if "_last_lr" in state_dict:  # a schedule's
        return {**state_dict, **{k: [float(v) for v in state_dict[k]]
                                 for k in ("base_lrs", "_last_lr") if k in state_dict}}
    return state_dict


def require_cuda(device, hint="use a CUDA device or run without the CUDA graph"):
    """Refuses, in one sentence, a device on which nothing can be captured."""
    if torch.device(device).type != "cuda":
        raise UserError(f"capturing the outer iteration as a CUDA graph needs a CUDA device, "
                        f"and the networks are on {torch.device(device)}; {hint}")


class CudaGraphs:
    """The CUDA side of GraphedIteration: a side stream for the warm-up, capture and replay."""

    def __init__(self, device):
        require_cuda(device)
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    @contextlib.contextmanager
    def warm_up(self):
        """Uncaptured work on the side stream: it starts after what the caller's stream holds,
        and the caller's later work waits for it."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:  # also after a failed warm-up: nothing later may overtake its work
            caller.wait_stream(self.stream)

    def capture(self, fn):
        """Records fn's device work without running it; returns the function that replays it."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph):
            fn()
        return graph.replay


class Eager:
    """GraphedIteration's stand-in for CudaGraphs on any device: the 'capture' records fn
    without running it, like a CUDA capture, and each 'replay' runs it."""

    def warm_up(self):
        return contextlib.nullcontext()

    def capture(self, fn):
        return fn


class GraphedIteration:
    """zskt.zero_shot_iteration on these networks and optimizers (made graph_ready), as a callable
    that returns the same dict in static tensors. The first `warmup` calls run uncaptured, the next
    captures the iteration as one CUDA graph and replays it, every later call replays it.
    capture=False runs every call uncaptured (any device): the tests' and the CPU's path."""

    def __init__(self, teacher, student, generator, opts, cfg, capture=True, warmup=WARMUP):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 (an uncaptured iteration creates Adam's "
                             f"state before the capture), not {warmup}")
        device = next(student.parameters()).device
        self.backend = CudaGraphs(device) if capture else Eager()  # refuses a CPU first
        graph_ready(opts)
        self.nets, self.opts, self.cfg = (teacher, student, generator), opts, cfg
        self.device, self.warmup = device, warmup
        self.calls, self.replay, self.outputs = 0, None, None
        self.groups = [g for opt in (opts.student, opts.generator) for g in opt.param_groups
                       if g["foreach"]]
        self.rates = [torch.empty((), dtype=g["params"][0].dtype, device=device)
                      for g in self.groups]

    def iteration(self):
        """One iteration of zskt.py's. A foreach Adam (CUDA's) steps with copies of the learning
        rates in the parameters' dtype, refreshed inside the iteration from the schedules'
        float64 ones: torch's foreach kernels take a scalar tensor of the tensors' own dtype
        only, and fall back to a kernel per parameter for another (ATen's
        ForeachBinaryOpScalarTensor.cu).
        Autocast's weight cache is off: torch requires that around captures
        (torch.cuda.make_graphed_callables), and no weight is cast twice per region here."""
        scheduled = [g["lr"] for g in self.groups]
        try:
            for group, rate, lr in zip(self.groups, self.rates, scheduled):
                rate.copy_(lr)
                group["lr"] = rate
            with torch.autocast(self.device.type, enabled=False, cache_enabled=False):
                return zskt.zero_shot_iteration(*self.nets, self.opts.student,
                                                self.opts.generator, self.cfg)
        finally:  # the schedules and the checkpoints see their float64 tensors again
            for group, lr in zip(self.groups, scheduled):
                group["lr"] = lr

    def keep(self, out):
        """Copies an iteration's statistics into the static outputs (made on the first call)."""
        if self.outputs is None:
            self.outputs = {k: torch.empty_like(v) for k, v in out.items()}
        for k, v in out.items():
            self.outputs[k].copy_(v)

    def __call__(self):
        if self.replay is None and self.calls < self.warmup:
            with self.backend.warm_up():
                out = self.iteration()
            self.keep(out)  # on the caller's stream, after the warm-up's work
        else:
            if self.replay is None:
                for opt in (self.opts.student, self.opts.generator):
                    opt.zero_grad(set_to_none=True)  # gradients are made in the graph's memory
                self.replay = self.backend.capture(lambda: self.keep(self.iteration()))
            self.replay()
        self.calls += 1
        return self.outputs


def algorithm_1(teacher, student, generator, opts, cfg, first=1, capture=True, warmup=WARMUP):
    """zskt.algorithm_1 with the outer iteration replayed as one CUDA graph: the same iterations,
    schedules and BatchNorm modes, the same yields (iteration, statistics), the statistics in
    static tensors that the next iteration overwrites. Makes `opts` graph-ready in place: load
    any checkpoint into them before calling this. capture=False: uncaptured, on any device. A
    device without CUDA is refused (with capture) before anything runs."""
    step = GraphedIteration(teacher, student, generator, opts, cfg, capture, warmup)
    teacher.eval()
    student.train()
    generator.train()
    return iterations(step, opts, range(first, cfg.iterations + 1))


def iterations(step, opts, numbers):
    """(iteration, statistics) for each iteration number, both schedules stepped after each: they
    fill the tensor learning rates that the next replay reads."""
    groups = [g for opt in (opts.student, opts.generator) for g in opt.param_groups]
    rates = [g["lr"] for g in groups]
    for iteration in numbers:
        out = step()
        opts.student_schedule.step()
        opts.generator_schedule.step()
        if any(g["lr"] is not rate for g, rate in zip(groups, rates)):  # replays read `rates`
            raise RuntimeError("this torch's LRScheduler replaced a tensor learning rate instead "
                               "of filling it in place; use torch 2.9 or newer")
        yield iteration, out
