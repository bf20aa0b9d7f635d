"""Machinery that every script of the project uses and no paper defines: errors, printed commands,
devices, files, run directories, locks, signals, progress lines and logs.

Nothing here computes anything of the method (zskt.py); a reader of the paper can skip this file.
"""
import argparse
import contextlib
import csv
import json
import math
import numbers
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# Errors and printed commands.

class UserError(Exception):
    """A problem with the user's input: printed as one sentence, exit status 2, no traceback."""


class Stopped(Exception):
    """A command stopped by SIGINT or SIGTERM (after saving a checkpoint, where it had one to
    save): exit status 128 + the signal's number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.status = 128 + signum


def exit_message(e):
    """(what a command prints, its exit status) when `e` ends it: a UserError is one line and
    status 2, a run stopped by a signal 128 + its number (130 for Ctrl-C, 143 for SIGTERM); None
    for anything else (a traceback)."""
    if isinstance(e, UserError):
        return f"error: {e}", 2
    if isinstance(e, Stopped):
        return str(e), e.status
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted{': ' + str(e) if str(e) else ''}", 128 + signal.SIGINT
    return None


def run_cli(main):
    """The entry point of every script: ends a UserError, a stopped run or a Ctrl-C with its
    exit_message. SIGINT means the same however the process was started: one started with SIGINT
    ignored (a background job of a script, some launchers and schedulers) would otherwise keep
    ignoring it, so `kill -INT` stops it as Ctrl-C does a foreground one (docs/long-runs.md)."""
    restore = None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        restore = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except (UserError, Stopped, KeyboardInterrupt) as e:
        message, status = exit_message(e)
        sys.stdout.flush()  # what was printed before the message comes before it in a log file
        print(message, file=sys.stderr)
        sys.exit(status)
    except BrokenPipeError:  # `... --list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        if restore is not None:
            signal.signal(signal.SIGINT, restore)


@contextlib.contextmanager
def user_input():
    """The errors that zskt.py and its companions raise for bad values, files or packages
    (ValueError, TypeError, FileNotFoundError, ImportError) become UserErrors meanwhile."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        raise UserError(str(e)) from None


def shell_command(script, *args):
    """A command to print for the user: this interpreter and absolute, quoted paths, so that it
    runs the same from any directory and from a fresh shell, virtual environment active or not."""
    python = sys.executable or "python"
    here = Path(__file__).resolve().with_name(script)
    return " ".join(shlex.quote(str(a)) for a in (python, here, *args))


def listed(names, most=6):
    """'a, b, c', or the first `most` names and how many there are."""
    names = list(names)
    shown = ", ".join(map(str, names[:most]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


def plural(n, word, many=None):
    """'1 thread', '2 threads'; plural(3, "class", "classes")."""
    return f"{n} {word if n == 1 else many or word + 's'}"


# ----------------------------------------------------------------------------------------------
# Devices.

def resolve_device(name=None):
    """'auto' (or None) is CUDA when available, else the CPU; an unavailable device is refused."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        known = "" if device.type in available else " (supported: cpu, cuda, cuda:N, mps)"
        raise UserError(f"--device {name} was asked for, but it is not available here; use "
                        f"--device cpu{known}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA "
                        f"devices here")
    return str(device)


def full_fp32():
    """fp32 means fp32 on GPUs too: current torch runs cuDNN convolutions in TF32 on Ampere and
    newer GPUs by default, and the author's PyTorch 1.0 had no TF32. Set by every script before
    it computes; --amp (bf16 autocast) is the opt-in fast path."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def cpu_info():
    """/proc/cpuinfo, or nothing where there is none."""
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def device_name(device):
    """'NVIDIA H100 80GB HBM3', or the CPU's model name and the threads torch uses."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = re.search(r"^model name\s*:\s*(.+)$", cpu_info(), re.M)
    name = model[1] if model else platform.processor() or platform.machine()
    return f"{name}, {plural(torch.get_num_threads(), 'thread')}"


# ----------------------------------------------------------------------------------------------
# Files: written atomically, read with weights_only=True.

def save_atomic(obj, path, save=None):
    """Save through a temporary file and os.replace: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    (save or torch.save)(obj, tmp)
    os.replace(tmp, path)


def corrupt_files(name, root):
    """The files of a torchvision dataset that are in `root` but fail torchvision's checksum."""
    import torchvision
    from torchvision.datasets.utils import check_integrity
    if name == "svhn":
        expected = [(f, md5) for _, f, md5 in torchvision.datasets.SVHN.split_list.values()]
    else:  # the archive, and the files extracted from it
        cls = getattr(torchvision.datasets, name.upper())
        inside = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
        expected = [(cls.filename, cls.tgz_md5), *((f"{cls.base_folder}/{f}", md5)
                                                   for f, md5 in inside)]
    return [root / f for f, md5 in expected
            if (root / f).is_file() and not check_integrity(str(root / f), md5)]


def write_json(path, obj):
    """JSON with null where a number is nan or inf: a bare NaN is not JSON."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v
    text = json.dumps(clean(obj), indent=2, allow_nan=False)
    save_atomic(text, path, lambda text, f: Path(f).write_text(text))


def write_csv(path, rows):
    """metrics.csv, written atomically; a row may lack columns that others have."""
    fields = list(dict.fromkeys(k for row in rows for k in row))

    def save(rows, tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
    save_atomic(rows, path, save)


def load_checkpoint(path):
    """torch.load(weights_only=True), with argparse.Namespace allowed too: the author's save_model
    stores its command-line args as one next to the weights. Anything else that needs unpickling
    is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same to a user
        if "Unsupported global" in str(e):  # a class instance that only unpickling could load
            raise UserError(f"{path} holds pickled Python objects, which are not loaded because "
                            f"unpickling can run arbitrary code; re-save it as a dict of tensors, "
                            f"e.g. {{'state_dict': model.state_dict()}}") from None
        kind = file_kind(path)
        if kind:
            raise UserError(f"{path} is not a PyTorch checkpoint (it is {kind}); pass the .pt or "
                            f".pth file that torch.save wrote") from None
        raise UserError(f"{path} is truncated or corrupt and cannot be read "
                        f"({type(e).__name__}); re-create it or use another checkpoint") from None


def file_kind(path):
    """'a text file', 'an empty file' or 'a file of another format' for a file that torch.save
    cannot have written (it writes a zip archive, or a pickle in PyTorch before 1.6); None for a
    file that starts as one of those (so a damaged checkpoint)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # zip; pickle protocol 2+
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not a character cut off by the 4096-byte read
            return "a file of another format"
    return "a text file" if b"\0" not in head else "a file of another format"


# ----------------------------------------------------------------------------------------------
# Reproducibility: every random state a resumed run needs.

def is_seed(seed):
    """What numpy accepts as a seed, and so what every script accepts: 0 to 2**32 - 1."""
    return isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed < 2 ** 32


def check_seed(seed, flag="--seed"):
    if not is_seed(seed):
        raise UserError(f"{flag} {seed}: seeds must be whole numbers from 0 to 2**32 - 1")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    numpy = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(numpy[1].copy()),
            "numpy_pos": int(numpy[2]), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy(), s["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(s["python"]), None))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ----------------------------------------------------------------------------------------------
# Run directories: never overwritten silently, never written by two processes, stopped cleanly.

def check_run_dir(out, overwrite=False, hint="pass --resume to continue that run, --overwrite "
                                              "to replace them, or another --out"):
    """An existing run directory is never reused or emptied unless the user asked for it; checked
    before anything is loaded, and again under the lock (prepare_run_dir). Returns what it holds
    (the lock file, the log of a start killed before it wrote anything else, and the marker of an
    interrupted curves run, which must outlive its emptying, are not counted)."""
    out = Path(out)
    spared = (".lock", "log.txt", ".unfinished")
    old = [p for p in out.iterdir() if p.name not in spared] if out.is_dir() else []
    if old and not overwrite:
        raise UserError(f"{out} already holds files; {hint}")
    return old


def prepare_run_dir(out, overwrite=False, hint="pass --resume to continue that run, --overwrite "
                                                "to replace them, or another --out"):
    """check_run_dir, then empty it where --overwrite asked for that, and check that it is
    writable. The lock file stays (the caller holds it, run_lock)."""
    out = Path(out)
    for p in check_run_dir(out, overwrite, hint):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {out} ({e.strerror}); pass a writable "
                        f"--out") from None
    return out


@contextlib.contextmanager
def run_lock(out, keep=(".lock", "config.json", "log.txt", "teacher.pt")):
    """One process per run directory: a second one is refused. The operating system drops the
    lock when its process dies, so a crash never leaves a run locked, and the lock file goes when
    the run ends. A directory this call created is removed again if the run fails, for whatever
    reason, before it wrote more than `keep` (a failed start), so the same command can start it."""
    out, created = Path(out), not Path(out).exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = locked_file(out / ".lock")
    except OSError as e:
        raise UserError(f"cannot write to output directory {out} ({e.strerror}); pass a writable "
                        f"--out") from None
    try:
        yield out
    except BaseException:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= set(keep):
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(OSError):  # removed above, or on Windows (open files stay)
            os.unlink(out / ".lock")  # while still locked: the next process locks a new file
        f.close()


def locked_file(path):
    """The lock file at `path`, opened and locked (flock, POSIX; not locked where there is none).
    A process that ends removes its lock file while it holds the lock; one that opened that file
    just before would then lock a file no longer in the directory: it checks, and takes the new
    one."""
    try:
        import fcntl
    except ImportError:  # Windows: runs are not locked
        return open(path, "a")
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise UserError(f"another process is writing {path.parent} right now; wait for it to "
                            f"end, or use another --out") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


class StopOnSignal:
    """The first SIGINT/SIGTERM is acknowledged at once and sets a flag that the training loop
    checks after each step, so it can save a checkpoint and exit cleanly. A second one stops at
    once, naming the checkpoint that survives (`saved`, which the loop keeps up to date). With
    `at_once` (a message: what is lost, what continues), the first signal stops at once."""

    def __init__(self, saved="no checkpoint had been written yet", at_once=None):
        self.saved = saved
        self.at_once = at_once  # a message, when there is nothing left to save

    def __enter__(self):
        self.signal, self.signum, self.previous = None, None, {}
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.at_once:
            raise Stopped(f"{name} {self.at_once}", signum)
        if self.signal:
            message = f"stopped at once without saving; {self.saved}"
            if signum == signal.SIGINT:  # what a second Ctrl-C raises in any Python program
                raise KeyboardInterrupt(message)
            raise Stopped(f"{name}: {message}", signum)
        self.signal, self.signum = name, signum
        again = ("press Ctrl-C again to stop" if signum == signal.SIGINT else  # a batch job
                 "a second SIGTERM or SIGINT stops")  # has no Ctrl-C to press
        say(f"\n{name}: stopping after this step and saving a checkpoint; {again} at once "
            f"without saving")

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def say(text):
    """A line on stderr from a signal handler. The handler may run inside a write to stderr or to
    a run's log (CPython runs handlers between the system calls of a buffered write), where a
    second write to the same stream raises 'reentrant call': then the line goes straight to the
    process's stderr descriptor instead."""
    try:
        print(text, file=sys.stderr, flush=True)
    except RuntimeError:
        os.write(sys.__stderr__.fileno(), (text + "\n").encode())


# ----------------------------------------------------------------------------------------------
# Watching a run: progress lines, a copy of the console in the run directory, seed statistics.

def format_time(s):
    """'7m05s', '2h13m'; '?' before anything was timed."""
    if not math.isfinite(s):
        return "?"
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def over_seeds(values):
    """Mean and population std (np.std, as the author's main.py) over seeds, and how many seeds
    had a finite value (the others are left out)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}


class Progress:
    """A tqdm bar on a terminal; in a log file (no terminal), a plain line every `every` seconds
    (and one soon after the start, for an early ETA) instead of carriage-return redraws. `note`
    shows the latest result (a line of its own in a log), and `extra` adds the seconds of the
    stages after this loop to the ETA of the whole run (the caller may update it as it learns
    more; None: the loop is the whole command)."""

    def __init__(self, total, desc, initial=0, unit="it", every=60.0, extra=None, file=None):
        self.file, self.every, self.extra, self.desc = file or sys.stderr, every, extra, desc
        self.unit = unit
        self.total, self.n, self.start, self.shown_n = total, initial, initial, initial
        self.t0 = self.shown = time.time()
        self.first_line_after = min(every, 10.0)
        self.note_text = ""
        self.bar = None
        if self.file.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file,
                            dynamic_ncols=True)

    def eta(self):
        done = self.n - self.start
        left = (time.time() - self.t0) / done * (self.total - self.n) if done else float("nan")
        return left + (self.extra or 0.0)

    def postfix(self):
        parts = [self.note_text] if self.note_text else []
        parts += [f"whole run ETA {format_time(self.eta())}"] if self.extra is not None else []
        return "; ".join(parts)

    def update(self, n=1):
        self.n += n
        now = time.time()
        if self.bar is not None:
            self.bar.update(n)
            if self.extra is not None and now - self.shown >= 1:  # the postfix, once a second
                self.shown = now
                self.bar.set_postfix_str(self.postfix(), refresh=False)
        elif now - self.shown >= self.every or (self.shown_n == self.start
                                                 and now - self.t0 >= self.first_line_after):
            self.line()

    def note(self, text):
        self.note_text = text
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix())
        self.line(text)

    def line(self, text=None):
        """One plain line: in a log file always, on a terminal only for notes (above the bar)."""
        sys.stdout.flush()  # `> run.log 2>&1`: what was printed before comes before this line
        self.shown, self.shown_n = time.time(), self.n
        rate = (self.n - self.start) / max(time.time() - self.t0, 1e-9)
        eta = "whole run ETA" if self.extra is not None else "ETA"
        msg = (f"{self.desc} {self.n}/{self.total} | {rate:.2f} {self.unit}/s | {eta} "
               f"{format_time(self.eta())}" + (f" | {text}" if text else ""))
        if self.bar is None:
            print(msg, file=self.file, flush=True)
        elif text:
            self.bar.write(msg, file=self.file)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.shown_n != self.n:  # a log file gets the last state of every loop
            self.line()


@contextlib.contextmanager
def tee(path):
    """Everything printed to stdout and stderr meanwhile is also appended to `path` (a run's
    log.txt), and so is the message that ends the command (exit_message), which run_cli prints
    after this has ended; a progress bar's redraws (carriage returns) stay on the terminal."""
    f = open(path, "a", buffering=1)

    class Tee:
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            self.stream.write(text)
            if "\n" in text:  # a log file (`> run.log 2>&1`) gets stdout's lines when they are
                self.stream.flush()  # printed, in order with stderr's, not at the end
            if "\r" not in text:
                try:
                    f.write(text)
                except RuntimeError:  # a signal handler's line (`say`) written while the main
                    pass  # code was writing to the log: the console has it
            return len(text)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Tee(old[0]), Tee(old[1])
    try:
        yield f
    except BaseException as e:
        ended = exit_message(e)
        if ended:
            f.write(ended[0] + "\n")
        raise
    finally:
        sys.stdout, sys.stderr = old
        f.close()
