"""A slow device emulated by a CPU quota: a command runs with at most F CPUs of this host's time.

    python -m profiles.quota --cpu 0.1 -- python -m runtime.edge --model-dir DIR --server HOST:PORT ...
    python -m profiles.quota --check          # which limiter this machine allows

Beside the sleep-based emulation (`--slowdown F`, which spins F - 1 times the model call only), a quota
slows everything the process does, Python's call overhead and the codec included, the way a real slow
core does.  Limiters, the first that works:

- cgroup2: a child cgroup with `cpu.max` = "quota period" (needs the cpu controller and root);
- cgroup1: the cpu controller's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (the same CFS bandwidth control);
- sigstop: where no cgroup is writable, the parent stops and continues the process (SIGSTOP/SIGCONT,
  as the `cpulimit` tool does) whenever its CPU time (from /proc) runs ahead of F x wall time.

The command starts through `/bin/sh`, which joins the cgroup and then execs it, so no instruction of it
runs outside the quota.  It sees SPLITOPT_CPU_QUOTA (JSON: fraction, period_ms, mechanism), which the
profiling runner records in the profile's meta and `auto.py --deploy` uses to run the edge the same way.
Standard library only: the bundle ships this file beside runner.py.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

QUOTA_ENV = "SPLITOPT_CPU_QUOTA"
MECHANISMS = ("auto", "cgroup2", "cgroup1", "sigstop")
MIN_QUOTA_US = 1000  # the kernel refuses a CFS quota below 1 ms
MIN_PERIOD_MS, MAX_PERIOD_MS = 1.0, 1000.0
_counter = itertools.count()


def default_period_ms(fraction: float) -> float:
    """10 ms (fine-grained throttling), longer where F x period would fall below the kernel's 1 ms."""
    return max(10.0, MIN_QUOTA_US / 1000 / fraction)


def check(fraction: float, period_ms: float | None = None) -> float:
    """The period to use; a one-line ValueError for a fraction or period the kernel would refuse."""
    if not 0 < fraction <= (os.cpu_count() or 1):
        raise ValueError(f"--cpu-quota must be in (0, {os.cpu_count() or 1}] CPUs, got {fraction:g}")
    period = default_period_ms(fraction) if period_ms is None else float(period_ms)
    if not MIN_PERIOD_MS <= period <= MAX_PERIOD_MS:
        raise ValueError(f"quota period must be in [{MIN_PERIOD_MS:g}, {MAX_PERIOD_MS:g}] ms, got {period:g}")
    if fraction * period * 1000 < MIN_QUOTA_US:
        raise ValueError(f"a quota of {fraction:g} CPU over {period:g} ms is {fraction * period:g} ms, below the "
                         f"kernel's 1 ms minimum: use a period of at least {default_period_ms(fraction):g} ms")
    return period


def _mounts() -> list[tuple[str, str, list[str]]]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[2], parts[1].replace("\\040", " "), parts[3].split(",")))
    return out


def cgroup_root(mechanism: str = "auto") -> tuple[str | None, Path | None, str]:
    """(mechanism, directory to create the group in, "") or (None, None, why no cgroup can be used)."""
    why = []
    if os.name != "posix" or not Path("/proc/self/mounts").exists():
        return None, None, "no /proc/self/mounts (not Linux)"
    mounts = _mounts()
    if mechanism in ("auto", "cgroup2"):
        v2 = [Path(m) for fs, m, _ in mounts if fs == "cgroup2"]
        for root in v2:
            try:
                controllers = (root / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "cpu" not in controllers:
                why.append(f"cgroup2 at {root} has no cpu controller (it has: {' '.join(controllers) or 'none'})")
            elif not os.access(root, os.W_OK):
                why.append(f"cgroup2 at {root} is not writable (needs root)")
            else:
                return "cgroup2", root, ""
        if not v2:
            why.append("no cgroup2 mount")
    if mechanism in ("auto", "cgroup1"):
        v1 = [Path(m) for fs, m, opts in mounts if fs == "cgroup" and "cpu" in opts]
        for root in v1:
            if not (root / "cpu.cfs_quota_us").exists():
                why.append(f"cgroup1 cpu at {root} has no CFS bandwidth control")
            elif not os.access(root, os.W_OK):
                why.append(f"cgroup1 cpu at {root} is not writable (needs root)")
            else:
                return "cgroup1", root, ""
        if not v1:
            why.append("no cgroup1 cpu mount")
    return None, None, "; ".join(why) or f"mechanism {mechanism} not found"


def describe(mechanism: str = "auto") -> str:
    """One line: which limiter a quota would use here, and why not a cgroup when it falls back."""
    name, root, why = cgroup_root(mechanism if mechanism != "sigstop" else "none")
    if name:
        return f"{name} ({root})"
    return f"sigstop (SIGSTOP/SIGCONT duty cycle; no writable cgroup: {why})"


class _CGroup:
    """A child cgroup with a CFS bandwidth limit; removed on close."""

    def __init__(self, mechanism: str, root: Path, fraction: float, period_ms: float):
        self.mechanism = mechanism
        self.path = root / f"splitopt-quota-{os.getpid()}-{next(_counter)}"
        period_us = int(round(period_ms * 1000))
        quota_us = max(MIN_QUOTA_US, int(round(fraction * period_us)))
        self.path.mkdir()
        try:
            if mechanism == "cgroup2":
                subtree = root / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                (self.path / "cpu.max").write_text(f"{quota_us} {period_us}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        except OSError:
            self.close()
            raise
        self.procs = self.path / "cgroup.procs"

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` through a shell that joins the cgroup first and then execs it."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs), *cmd]

    def throttled_ms(self) -> float | None:
        """Total time the group was throttled (cpu.stat), in ms."""
        try:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            return None
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1000
        if "throttled_time" in stat:
            return int(stat["throttled_time"]) / 1e6
        return None

    def close(self) -> None:
        for _ in range(50):  # the last task may take a moment to leave
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` in ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class _StopLimiter(threading.Thread):
    """Stops the process whenever its CPU time runs ahead of fraction x wall time (plus one period of credit)."""

    def __init__(self, pid: int, fraction: float, period_ms: float):
        super().__init__(daemon=True, name="cpu-quota-sigstop")
        self.pid, self.fraction, self.period_s = pid, fraction, period_ms / 1000
        self.stopped_s = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        tick = min(self.period_s / 4, 0.005)
        while not self._done.is_set():
            used = _cpu_ns(self.pid) / 1e9
            allowed = self.fraction * (time.monotonic() - start + self.period_s)
            if used > allowed:
                pause = (used - allowed) / self.fraction
                try:
                    os.kill(self.pid, signal.SIGSTOP)
                    self._done.wait(pause)
                    self.stopped_s += pause
                finally:
                    try:
                        os.kill(self.pid, signal.SIGCONT)
                    except ProcessLookupError:
                        return
            else:
                self._done.wait(tick)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=1)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


class Limited:
    """A process running under a CPU quota; `close()` (or the with-block) waits for it and cleans up."""

    def __init__(self, cmd: Sequence[str], fraction: float, period_ms: float | None = None,
                 mechanism: str = "auto", env: dict[str, str] | None = None, **popen_kwargs):
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown quota mechanism {mechanism!r}; choose one of: {', '.join(MECHANISMS)}")
        self.fraction, self.period_ms = float(fraction), check(fraction, period_ms)
        self.group: _CGroup | None = None
        self.limiter: _StopLimiter | None = None
        name, root, self.fallback_reason = cgroup_root(mechanism) if mechanism != "sigstop" else (None, None, "asked")
        if name is None and mechanism in ("cgroup1", "cgroup2"):
            raise ValueError(f"no {mechanism} CPU quota here: {self.fallback_reason}")
        if name is not None:
            try:
                self.group = _CGroup(name, root, self.fraction, self.period_ms)  # type: ignore[arg-type]
            except OSError as e:
                if mechanism != "auto":
                    raise ValueError(f"cannot create a {name} cgroup under {root}: {e}") from None
                self.fallback_reason = f"creating a {name} cgroup under {root} failed: {e}"
        self.mechanism = self.group.mechanism if self.group else "sigstop"
        if self.mechanism == "sigstop" and not Path("/proc/self/task").is_dir():
            raise ValueError(f"no CPU limiter available: no writable cgroup ({self.fallback_reason}) and no /proc")
        child_env = dict(os.environ if env is None else env)
        child_env[QUOTA_ENV] = json.dumps(self.info())
        argv = self.group.wrap(cmd) if self.group else list(cmd)
        self.proc = subprocess.Popen(argv, env=child_env, **popen_kwargs)
        if self.group is None:
            self.limiter = _StopLimiter(self.proc.pid, self.fraction, self.period_ms)
            self.limiter.start()

    def info(self) -> dict[str, object]:
        """What the process is told (SPLITOPT_CPU_QUOTA) and what a profile records."""
        out: dict[str, object] = {"fraction": self.fraction, "period_ms": self.period_ms, "mechanism": self.mechanism}
        if self.mechanism == "sigstop":
            out["why_not_cgroup"] = self.fallback_reason
        return out

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def throttled_ms(self) -> float | None:
        """Time the quota held the process back so far, in ms."""
        if self.group is not None:
            return self.group.throttled_ms()
        return self.limiter.stopped_s * 1000 if self.limiter else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.limiter is not None:
            self.limiter.stop()
        if self.group is not None:
            self.group.close()

    def __enter__(self) -> "Limited":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.proc.wait()
        self.close()


def run(cmd: Sequence[str], fraction: float, period_ms: float | None = None, mechanism: str = "auto",
        announce: bool = True) -> int:
    """Run `cmd` to the end under the quota; its exit code.  Says on stderr which limiter it used."""
    with Limited(cmd, fraction, period_ms, mechanism) as limited:
        if announce:
            how = limited.mechanism if limited.group else f"sigstop, because no cgroup could be used: {limited.fallback_reason}"
            print(f"cpu quota {fraction:g} CPU, period {limited.period_ms:g} ms, via {how}", file=sys.stderr)
        code = limited.proc.wait()
    return code


def run_python(args: Sequence[str], fraction: float, period_ms: float | None, what: str,
               root: str | Path) -> tuple[dict[str, object], float | None]:
    """`python ARGS` (this interpreter, in `root` with `root` importable) to the end under the quota, its
    output kept aside; (the limiter's info, ms the quota held it back).  A RuntimeError naming `what` and
    the last line it printed when it fails."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryFile("w+") as log:
        with Limited([sys.executable, *args], fraction, period_ms, env=env, cwd=str(root), stdout=log,
                     stderr=log) as child:
            code = child.wait()
            info, throttled = child.info(), child.throttled_ms()
        if code:
            log.seek(0)
            tail = log.read().strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{what} under a {fraction:g} CPU quota exited with {code}: {tail[0]}")
    return info, throttled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiles.quota", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", type=float, default=None, help="CPUs the command may use, e.g. 0.1")
    p.add_argument("--period-ms", type=float, default=None, help="quota period (default: 10 ms, longer for tiny F)")
    p.add_argument("--mechanism", default="auto", choices=MECHANISMS)
    p.add_argument("--check", action="store_true", help="print which limiter this machine allows, then exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = p.parse_args(argv)
    if args.check:
        print(describe(args.mechanism))
        return 0
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.cpu is None or not cmd:
        p.error("give --cpu F and, after --, the command to run")
    try:
        return run(cmd, args.cpu, args.period_ms, args.mechanism)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
