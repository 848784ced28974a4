"""Hardening benchmark of the cloud server (runtime.cloud), each part against its own server process:

1. hostile: 200 connections that never authenticate (a third idle, a third sending half a header, a
   third dripping a byte every 1.5 s; each reopened as soon as the server drops it) for --duration
   seconds, while a client with the secret connects and asks for one sample every 0.25 s: the time
   from connect to reply, and whether any attempt failed.  Once with the defaults (--max-pending 256),
   once with --max-pending 64, where the attackers outnumber the pending slots and keep evicting.
2. memory: 64 authenticated connections each announce a maximal frame (64 MiB, the default
   --max-frame) and send all of it but the last byte ("held"), or send complete maximal frames back
   to back ("complete"); the server's resident memory (VmRSS, peak VmHWM) against --memory-budget.
3. fairness: a client asking for one sample at a time, alone and beside two clients sending
   256-sample batches back to back: its p50/p95 round trip, --scheduler lock (the old global lock)
   against fair.
4. throughput: 16 clients asking for one sample at a time, back to back: requests/s, lock against fair.

The model is resnet18 at 32 px (seeded random weights, as the runtime tests use) split at k = 3 with
fp32 features, exported on the fly unless --model-dir names an export.  Parts 3 and 4 run --rounds
rounds, interleaving the schedulers, and report medians over rounds.  Load runs in separate processes
from the measured client; everything is on 127.0.0.1 and stops by itself.

    python bench/hardening.py [--quick] [--duration 60] [--rounds 3] [--seconds 10] [--out FILE]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from runtime import protocol as wire  # noqa: E402
from runtime.client import Client  # noqa: E402
from runtime.protocol import MsgType  # noqa: E402

SECRET = b"bench secret"
SHAPE = (128, 4, 4)  # resnet18 at 32 px after layer2
MIB = 1 << 20


# -- the model and the server process -----------------------------------------------------------------

def export_model(out: Path) -> Path:
    import torch

    from compress import data as datasets
    from compress import zoo
    from compress.candidate import Candidate
    from runtime.export import export_split

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = zoo.build("resnet18", 10, 32).eval()
    export_split(Candidate(3, 0.0, model, None, {}, {}), datasets.load("digits", input_size=32, seed=0), out,
                 threshold=None, codec="fp32", samples=4)
    return out


class Server:
    """`python -m runtime.cloud` in its own process, on an ephemeral port."""

    def __init__(self, model_dir: Path, *flags: str, secret_file: Path | None = None):
        cmd = [sys.executable, "-m", "runtime.cloud", "--model-dir", str(model_dir), "--port", "0", *flags]
        if secret_file is not None:
            cmd += ["--secret-file", str(secret_file)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("listening on"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split()[2].rsplit(":", 1)[1])

    def status(self, key: str) -> int:
        """A /proc/PID/status size field (VmRSS, VmHWM) in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) << 10
        raise KeyError(key)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _handshake(sock: socket.socket) -> None:
    """The keyless handshake on a blocking socket."""
    hello = wire.read_frame(sock)
    assert hello is not None and hello.type == MsgType.HELLO, hello
    sock.sendall(wire.pack(MsgType.AUTH, 1))
    ok = wire.read_frame(sock)
    assert ok is not None and ok.type == MsgType.AUTH_OK, ok


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms) if ms else np.asarray([np.nan])
    return {"n": len(ms), "p50_ms": float(np.median(a)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max())}


# -- 1. hostile connections ---------------------------------------------------------------------------

def _hostile(port: int, n: int, seconds: float, result) -> None:
    """n connections that never authenticate, each reopened when the server drops it (a process of its own)."""
    kinds = ("idle", "half-header", "drip")
    fake_auth = wire.pack(MsgType.AUTH, 1, bytes(64))
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, list] = {}  # sock -> [kind, next drip time, drip position]
    opened = dropped = failed = 0
    held: list[int] = []

    def open_one(kind: str) -> None:
        nonlocal opened, failed
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            failed += 1
            return
        s.setblocking(False)
        if kind == "half-header":
            s.send(fake_auth[:20])
        conns[s] = [kind, time.monotonic() + 1.5, 0]
        sel.register(s, selectors.EVENT_READ)
        opened += 1

    for i in range(n):
        open_one(kinds[i % 3])
    end = time.monotonic() + seconds
    next_sample = time.monotonic()
    while (now := time.monotonic()) < end:
        for key, _ in sel.select(0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # dropped by the server (deadline or eviction): come back at once
                kind = conns.pop(s)[0]  # type: ignore[arg-type]
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                dropped += 1
                open_one(kind)
        for s, state in list(conns.items()):
            if state[0] == "drip" and now >= state[1]:
                try:
                    s.send(fake_auth[state[2] % len(fake_auth):][:1])
                except OSError:
                    pass
                state[1], state[2] = now + 1.5, state[2] + 1
        if now >= next_sample:
            held.append(len(conns))
            next_sample = now + 1.0
        while len(conns) < n and time.monotonic() < end:  # a failed reopen is retried
            open_one(kinds[len(conns) % 3])
    for s in conns:
        s.close()
    result.put({"opened": opened, "dropped": dropped, "connect_failures": failed,
                "held_median": float(np.median(held)) if held else 0.0, "held_min": min(held) if held else 0})


def hostile(model_dir: Path, secret_file: Path, seconds: float, n: int, *flags: str) -> dict[str, Any]:
    x = wire.encode(np.zeros((1, *SHAPE), np.float32), "fp32")
    with Server(model_dir, *flags, secret_file=secret_file) as server:
        ctx = mp.get_context("spawn")
        result = ctx.Queue()
        attacker = ctx.Process(target=_hostile, args=(server.port, n, seconds + 4, result), daemon=True)
        attacker.start()
        time.sleep(3)  # let the attackers connect
        times, failures = [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            client = Client("127.0.0.1", server.port, secret=SECRET, timeout=10)
            try:
                client.infer(x)
                times.append((time.perf_counter() - start) * 1e3)
            except Exception as e:  # noqa: BLE001 - counted
                failures.append(f"{type(e).__name__}: {e}")
            finally:
                client.close()
            time.sleep(0.25)
        attack = result.get(timeout=60)
        attacker.join(timeout=30)
    return {"flags": " ".join(flags) or "defaults", "hostile": n, "seconds": seconds, **_stats(times),
            "failures": len(failures), "first_failure": failures[0] if failures else "", **attack}


# -- 2. memory --------------------------------------------------------------------------------------

def memory(model_dir: Path, seconds: float, n: int, complete: bool, *flags: str) -> dict[str, Any]:
    frame = wire.DEFAULT_MAX_FRAME
    body = memoryview(bytes(frame))
    with Server(model_dir, *flags) as server:
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            _handshake(s)
            s.setblocking(False)
            socks.append(s)
        time.sleep(0.5)
        base = server.status("VmRSS")
        header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, int(MsgType.SINK), 0, 0, 1, *(0,) * 6, frame)
        stream = {s: [memoryview(header), 0] for s in socks}  # the header still to send, and how far
        want = frame if complete else frame - 1  # held: the frame never completes
        sent = {s: 0 for s in socks}
        acks = {s: b"" for s in socks}
        done_frames = 0
        peak_rss = base
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, events in sel.select(0.1):
                s = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_READ:
                    try:
                        data = s.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        sel.unregister(s)
                        continue
                    if data:
                        acks[s] += data
                        while len(acks[s]) >= wire.HEADER.size:  # a SINK_ACK: the next frame may go
                            acks[s] = acks[s][wire.HEADER.size:]
                            done_frames += 1
                            stream[s], sent[s] = [memoryview(header), 0], 0
                if events & selectors.EVENT_WRITE:
                    view, offset = stream[s]
                    try:
                        if offset < len(view):
                            stream[s][1] += s.send(view[offset:offset + (1 << 20)])
                        elif sent[s] < want:
                            k = s.send(body[sent[s]:min(want, sent[s] + (1 << 20))])
                            sent[s] += k
                    except BlockingIOError:
                        pass
                    except OSError:
                        sel.unregister(s)
            peak_rss = max(peak_rss, server.status("VmRSS"))
        hwm = server.status("VmHWM")
        for s in socks:
            s.close()
    budget = next((int(flags[i + 1]) for i, f in enumerate(flags) if f == "--memory-budget"), 256 * MIB)
    return {"mode": "complete frames" if complete else "held frames", "connections": n, "frame_mib": frame / MIB,
            "announced_mib": n * frame / MIB, "budget_mib": budget / MIB, "base_rss_mib": base / MIB,
            "peak_rss_mib": peak_rss / MIB, "vmhwm_mib": hwm / MIB, "growth_mib": (hwm - base) / MIB,
            "frames_completed": done_frames, "seconds": seconds}


# -- 3, 4. scheduling ---------------------------------------------------------------------------------

def _load(port: int, clients: int, batch: int, seconds: float, start_at: float, result) -> None:
    """`clients` threads each sending `batch`-sample requests back to back (a process of its own);
    puts every round trip in ms."""
    rng = np.random.default_rng(batch)
    tensor = wire.encode(rng.standard_normal((batch, *SHAPE)).astype(np.float32), "fp32")
    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def run(i: int) -> None:
        client = Client("127.0.0.1", port, timeout=60)
        try:
            client.connect()
            while time.time() < start_at:
                time.sleep(0.001)
            end = start_at + seconds
            while time.time() < end:
                t = time.perf_counter()
                client.infer(tensor)
                times[i].append((time.perf_counter() - t) * 1e3)
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.put({"times": [x for ts in times for x in ts], "errors": errors})


def _spawn(port: int, clients: int, batch: int, seconds: float, start_at: float):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load, args=(port, clients, batch, seconds, start_at, q), daemon=True)
    p.start()
    return p, q


def _collect(p, q) -> dict[str, Any]:
    out = q.get(timeout=600)
    p.join(timeout=60)
    if out["errors"]:
        raise RuntimeError(f"load client failed: {out['errors'][0]}")
    return out


def fairness(port: int, seconds: float) -> dict[str, float]:
    """The small client's round trips alone, then beside two 256-sample batch senders."""
    solo = _spawn(port, 1, 1, seconds, time.time() + 3)
    alone = _stats(_collect(*solo)["times"])
    start = time.time() + 3
    bulk = _spawn(port, 2, 256, seconds + 2, start)
    small = _spawn(port, 1, 1, seconds, start + 1)  # starts once the batches are flowing
    beside = _stats(_collect(*small)["times"])
    batches = _collect(*bulk)["times"]
    return {"solo_p50_ms": alone["p50_ms"], "solo_p95_ms": alone["p95_ms"], "beside_p50_ms": beside["p50_ms"],
            "beside_p95_ms": beside["p95_ms"], "p95_ratio": beside["p95_ms"] / alone["p95_ms"],
            "bulk_samples_per_s": 256 * len(batches) / (seconds + 2)}


def throughput(port: int, seconds: float, clients: int) -> dict[str, float]:
    out = _collect(*_spawn(port, clients, 1, seconds, time.time() + 3))
    s = _stats(out["times"])
    return {"clients": clients, "requests_per_s": len(out["times"]) / seconds, "p50_ms": s["p50_ms"],
            "p95_ms": s["p95_ms"]}


def scheduling(model_dir: Path, rounds: int, seconds: float) -> tuple[list[dict], list[dict]]:
    fair_rows, tput_rows = [], []
    servers = {name: Server(model_dir, "--scheduler", name) for name in ("lock", "fair")}
    try:
        for r in range(rounds):
            for name, server in servers.items():  # interleaved: both see the same machine state
                fair_rows.append({"scheduler": name, "round": r, **fairness(server.port, seconds)})
                print(f"  fairness {name} round {r}: {_fmt(fair_rows[-1])}", flush=True)
                for clients in (1, 16):
                    tput_rows.append({"scheduler": name, "round": r, **throughput(server.port, seconds, clients)})
                    print(f"  throughput {name} round {r}: {_fmt(tput_rows[-1])}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return fair_rows, tput_rows


# -- report -----------------------------------------------------------------------------------------

def _fmt(row: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


def _median_by(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    import pandas as pd

    df = pd.DataFrame(rows).drop(columns="round")
    return df.groupby(list(keys), sort=False).median(numeric_only=True).reset_index().to_dict("records")


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs: hostile 10 s, memory 5 s, 1 round of 4 s")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of hostile connections (default 60)")
    p.add_argument("--hostile", type=int, default=200, help="hostile connections (default 200)")
    p.add_argument("--hold", type=float, default=15.0, help="seconds of each memory run (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the scheduling runs (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of each scheduling run (default 10)")
    p.add_argument("--model-dir", default=None, help="an exported split to serve (default: export resnet18 k=3)")
    p.add_argument("--out", default=None, help="also write the tables here (markdown)")
    a = p.parse_args()
    if a.quick:
        a.duration, a.hold, a.rounds, a.seconds = 10.0, 5.0, 1, 4.0
    for name in ("duration", "hold", "seconds"):
        if not getattr(a, name) > 0:
            p.error(f"--{name} must be > 0")
    if a.rounds < 1 or a.hostile < 1:
        p.error("--rounds and --hostile must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(a.model_dir) if a.model_dir else export_model(Path(tmp) / "k3")
        secret_file = Path(tmp) / "secret"
        secret_file.write_bytes(SECRET)
        print(f"model {model_dir}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        hostile_rows = []
        for flags in ((), ("--max-pending", "64")):
            hostile_rows.append(hostile(model_dir, secret_file, a.duration, a.hostile, *flags))
            print(f"  hostile: {_fmt(hostile_rows[-1])}", flush=True)
        memory_rows = []
        for complete in (False, True):
            memory_rows.append(memory(model_dir, a.hold, 64, complete))
            print(f"  memory: {_fmt(memory_rows[-1])}", flush=True)
        fair_rows, tput_rows = scheduling(model_dir, a.rounds, a.seconds)
    fair = _median_by(fair_rows, ("scheduler",))
    tput = _median_by(tput_rows, ("scheduler", "clients"))
    report = "\n\n".join([
        f"1. {a.hostile} hostile connections (idle / half header / drip 1 B per 1.5 s) for {a.duration:g} s; "
        f"a client with the secret connects and asks for one sample every 0.25 s (ms from connect to reply)\n\n"
        + _table(hostile_rows, ["flags", "n", "p50_ms", "p95_ms", "max_ms", "failures", "held_median", "dropped"]),
        f"2. server memory, 64 connections each announcing a 64 MiB frame, {a.hold:g} s (MiB; budget = "
        f"--memory-budget)\n\n" + _table(memory_rows, ["mode", "announced_mib", "budget_mib", "base_rss_mib",
                                                       "vmhwm_mib", "growth_mib", "frames_completed"]),
        f"3. a 1-sample client alone and beside two 256-sample batch senders (ms; median of {a.rounds} rounds of "
        f"{a.seconds:g} s)\n\n" + _table(fair, ["scheduler", "solo_p50_ms", "solo_p95_ms", "beside_p50_ms",
                                               "beside_p95_ms", "p95_ratio", "bulk_samples_per_s"]),
        f"4. 1-sample clients back to back (median of {a.rounds} rounds of {a.seconds:g} s)\n\n"
        + _table(tput, ["scheduler", "clients", "requests_per_s", "p50_ms", "p95_ms"]),
    ])
    print("\n" + report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
