"""Command line of the profiling stage.

    python -m profiles measure --model resnet18 --input-size 224 --device host --role device --threads 1
    python -m profiles emulate --from host --factor 10 --name emulated-10x [--input-size 32]
    python -m profiles overhead --model resnet18 --input-size 32 --device host   # adds the overhead section
    python -m profiles idle --model resnet18 --input-size 32 --device host   # adds the idle curve only
    python -m profiles exits --model resnet18 --input-size 32 --device server   # a server's head and exit rows (r = 0)
    python -m profiles defaults --input-size 224          # host, server, emulated-10x/-50x, both models
    python -m profiles validate --model resnet18 --input-size 32 --device host --server server --csv out.csv
    python -m profiles list
    python -m profiles bundle --model resnet18 --input-size 32 --out DIR [--role server]   # for a real device
    python DIR/runner.py --out profile.json       # on the device: needs only numpy and onnxruntime
    python -m profiles check profile.json [--server server]   # back here: format, K and shapes vs the model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_MODELS = ("mobilenet_v2", "resnet18")
# The shipped devices: (name, role, intra-op threads) measured here, plus emulated slow devices.
DEFAULT_DEVICES = (("host", "device", 1), ("server", "server", 2))
DEFAULT_EMULATED = (("emulated-10x", "host", 10.0), ("emulated-50x", "host", 50.0),
                    ("emulated-edge-4x", "server", 4.0))  # the edge tier's box (server role)


def _ratios(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    from compress.prune import RATIO_GRID
    from profiles.overhead import DEFAULT_MIN_MS as OVERHEAD_MIN_MS
    from profiles.overhead import DEFAULT_REPEATS as OVERHEAD_REPEATS
    from profiles.overhead import DEFAULT_WARMUP as OVERHEAD_WARMUP
    from profiles.profiler import DEFAULT_MIN_MS, DEFAULT_REPEATS, DEFAULT_WARMUP

    p = argparse.ArgumentParser(prog="python -m profiles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="profile directory (default: the shipped profiles/data)")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("measure", help="measure one device or server profile with ONNX Runtime")
    m.add_argument("--model", required=True)
    m.add_argument("--input-size", type=int, required=True)
    m.add_argument("--device", required=True, help="name of the profile's device (its folder under the root)")
    m.add_argument("--role", choices=("device", "server"), default="device")
    m.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    m.add_argument("--ratios", type=_ratios, default=list(RATIO_GRID), help="comma-separated pruning ratios")
    m.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    m.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    m.add_argument("--min-ms", type=float, default=DEFAULT_MIN_MS,
                   help="time short parts more often, until this many ms of timed runs")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--out", default=None, help="output JSON path (default: <root>/<device>/<model>-<size>px.json)")
    m.add_argument("--overhead", action="store_true", help="then measure its overhead section (as the overhead command)")

    e = sub.add_parser("emulate", help="write a slowed-down copy of every profile of a measured device")
    e.add_argument("--from", dest="source", required=True)
    e.add_argument("--factor", type=float, required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--input-size", type=int, action="append", default=None,
                   help="only the source's profiles at this size (repeatable; default: all)")

    o = sub.add_parser("overhead", help="measure the per-request runtime overhead outside the model and add it to "
                                        "an existing profile in place (an emulated profile copies its source's)")
    o.add_argument("--model", required=True)
    o.add_argument("--input-size", type=int, required=True)
    o.add_argument("--device", required=True, help="device name (its folder under the root) or a profile .json path")
    o.add_argument("--repeats", type=int, default=OVERHEAD_REPEATS)
    o.add_argument("--warmup", type=int, default=OVERHEAD_WARMUP)
    o.add_argument("--min-ms", type=float, default=OVERHEAD_MIN_MS,
                   help="time each quantity until this many ms of timed requests")
    o.add_argument("--every-ratio", action="store_true",
                   help="measure every ratio instead of the grid's two ends (interpolated in between)")

    i = sub.add_parser("idle", help="measure how much slower a cold call runs after longer idle gaps and add the "
                                    "curve to an existing profile (an emulated profile copies its source's)")
    i.add_argument("--model", required=True)
    i.add_argument("--input-size", type=int, required=True)
    i.add_argument("--device", required=True, help="device name (its folder under the root) or a profile .json path")
    i.add_argument("--calls", type=int, default=40, help="timed calls per gap")

    x = sub.add_parser("exits", help="measure the head and exit rows at r = 0 an edge box needs to run an exit and add "
                                     "them to an existing server profile (an emulated profile copies its source's)")
    x.add_argument("--model", required=True)
    x.add_argument("--input-size", type=int, required=True)
    x.add_argument("--device", required=True, help="device name (its folder under the root) or a profile .json path")

    d = sub.add_parser("defaults", help="measure the shipped set: host (1 thread), server (2 threads), emulated-10x "
                                        "and -50x, each with its overhead section and idle curve")
    d.add_argument("--input-size", type=int, action="append", required=True, help="repeatable")
    d.add_argument("--models", default=",".join(DEFAULT_MODELS))
    d.add_argument("--ratios", type=_ratios, default=list(RATIO_GRID), help="comma-separated pruning ratios")
    d.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    d.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    d.add_argument("--min-ms", type=float, default=DEFAULT_MIN_MS)

    v = sub.add_parser("validate", help="compare a profile's predictions with a fresh measurement")
    v.add_argument("--model", required=True)
    v.add_argument("--input-size", type=int, required=True)
    v.add_argument("--device", required=True, help="device name or profile path")
    v.add_argument("--server", required=True, help="server name or profile path")
    v.add_argument("--repeats", type=int, default=None, help="default: the device profile's repeats")
    v.add_argument("--min-ms", type=float, default=None, help="default: the device profile's min_ms")
    v.add_argument("--csv", default=None, help="write the per-(k, r) table here")

    b = sub.add_parser("bundle", help="export the ONNX parts of a profile and a runner that times them on a "
                                      "device with only numpy and onnxruntime")
    b.add_argument("--model", required=True)
    b.add_argument("--input-size", type=int, required=True)
    b.add_argument("--out", required=True, help="bundle directory (new, or an older bundle to replace)")
    b.add_argument("--role", choices=("device", "server"), default="device",
                   help="device: heads and exits (an end device); server: tails, and heads and exits at r = 0 "
                        "(what an edge box runs for an exit on the edge)")
    b.add_argument("--ratios", type=_ratios, default=list(RATIO_GRID),
                   help="comma-separated pruning ratios (default: the shipped profiles' grid, which a device "
                        "profile must share with its server profile)")
    b.add_argument("--num-classes", type=int, default=10)

    c = sub.add_parser("check", help="check a profile file (e.g. from a device's runner) against the model")
    c.add_argument("profile", help="profile .json path or device name (then give --model and --input-size)")
    c.add_argument("--model", default=None)
    c.add_argument("--input-size", type=int, default=None)
    c.add_argument("--server", default=None, help="also check it pairs with this server profile (name or path)")

    sub.add_parser("list", help="list the profiles under the root")
    return p


def _list(root) -> None:
    import pandas as pd

    from profiles.profile import DATA_ROOT, available_devices, available_profiles, read_json

    rows = []
    for device in available_devices(root):
        for stem in available_profiles(device, root):
            doc = read_json(Path(root or DATA_ROOT) / device / f"{stem}.json")
            meta = doc["meta"]
            rows.append({"device": device, "profile": stem, "role": meta["role"], "threads": meta["threads"],
                         "slowdown": meta["slowdown"], "emulates": meta["emulates"] or "",
                         "overhead": "yes" if doc.get("overhead") else "no",
                         "ratios": len(meta["ratios"]), "repeats": meta["repeats"],
                         "seconds": meta["seconds"], "date": meta["date"], "host": meta["host"]})
    print(pd.DataFrame(rows).to_string(index=False) if rows else f"no profiles under {root or DATA_ROOT}")


def _overhead(device: str, model: str, input_size: int, root, **kwargs) -> Path:
    from profiles import overhead
    from profiles.profile import _is_path

    path = overhead.add_to_file(device, model, input_size, root, path=device if _is_path(device) else None, **kwargs)
    meta = overhead.read_json(path)["meta"]["overhead"]
    how = f"copied from {meta['copied_from']}" if "copied_from" in meta else f"{meta['seconds']} s"
    print(f"wrote the overhead section of {path} ({how})")
    return path


def _idle(device: str, model: str, input_size: int, root, **kwargs) -> Path:
    from profiles import idle
    from profiles.profile import _is_path

    path = idle.add_to_file(device, model, input_size, root, path=device if _is_path(device) else None, **kwargs)
    curve = idle.read_json(path)["meta"]["idle"]
    print(f"wrote the idle curve of {path}: " + ", ".join(f"x{f:.2f} after {g:g} ms" for g, f in
                                                          zip(curve["gap_ms"], curve["factor"])))
    return path


def _bundle(args) -> None:
    from profiles.bundle import export_parts, size_bytes

    doc = export_parts(args.model, args.input_size, args.out, args.role, args.ratios, args.num_classes)
    parts = len(doc["parts"])
    print(f"wrote {args.out}: {args.role} bundle of {args.model} {args.input_size}px, K = {doc['K']}, "
          f"{len(doc['ratios'])} ratios, {parts} parts, {size_bytes(args.out) / 1024:.0f} KiB")
    print(f"on the device: python {Path(args.out) / 'runner.py'} --out profile.json --device NAME"
          f"{' --threads 2' if args.role == 'server' else ''}   (needs only numpy and onnxruntime)")


def _check(args) -> None:
    from compress import zoo
    from profiles.profile import _is_path, check_pair, load_profile, read_json

    if _is_path(args.profile):
        meta = read_json(args.profile).get("meta", {})
        model, size = args.model or meta.get("model"), args.input_size or meta.get("input_size")
    else:
        model, size = args.model, args.input_size
    if not model or not size:
        raise ValueError("give --model and --input-size with a device name")
    profile = load_profile(args.profile, model, int(size), args.root)
    table = zoo.split_table(zoo.build(model, profile.num_classes, int(size)), int(size))
    if profile.K != len(table) - 1:
        raise ValueError(f"{profile.source} has K = {profile.K} but {model} has K = {len(table) - 1}: measured on "
                         f"another cut of the model")
    if 0.0 in profile.ratios:
        wrong = [info.k for info in table if profile.shape(info.k, 0.0) != tuple(info.shape)]
        if wrong:
            raise ValueError(f"{profile.source}: split tensor shapes at r = 0 differ from {model}'s at k = {wrong}")
    if args.server:
        check_pair(profile, load_profile(args.server, model, int(size), args.root))
    meta = profile.meta
    quota = meta.get("cpu_quota")
    print(f"ok: {profile.source}: {profile.role} profile of {model} {size}px, K = {profile.K}, "
          f"{len(profile.ratios)} ratios, measured on {meta['device']} ({meta['cpu']}, {meta['threads']} thread(s), "
          f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())})"
          + (f", under a CPU quota of {quota['fraction']:g} ({quota['mechanism']})" if quota else "")
          + ("" if profile.has_overhead else "; no overhead section (the search then counts 0 ms outside the model)")
          + (f"; pairs with {args.server}" if args.server else ""))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from profiles import profiler
    from profiles.profile import load_profile

    try:
        if args.command == "measure":
            path = profiler.measure_to_file(args.model, args.input_size, args.device, out=args.out, root=args.root,
                                            role=args.role, threads=args.threads, ratios=args.ratios,
                                            repeats=args.repeats, warmup=args.warmup, min_ms=args.min_ms,
                                            num_classes=args.num_classes)
            meta = profiler.read_json(path)["meta"]
            print(f"wrote {path} ({meta['seconds']} s; load average {meta['loadavg_before']} -> {meta['loadavg_after']})")
            if args.overhead:
                _overhead(str(path), args.model, args.input_size, args.root)
        elif args.command == "emulate":
            for path in profiler.emulate(args.source, args.factor, args.name, args.root, args.input_size):
                print(f"wrote {path}")
        elif args.command == "overhead":
            _overhead(args.device, args.model, args.input_size, args.root, repeats=args.repeats,
                      warmup=args.warmup, min_ms=args.min_ms, every_ratio=args.every_ratio)
        elif args.command == "exits":
            from profiles.profile import _is_path

            path = profiler.add_exits(args.device, args.model, args.input_size, args.root,
                                      path=args.device if _is_path(args.device) else None)
            how = profiler.read_json(path)["meta"]["exits"].get("copied_from") or "measured"
            print(f"wrote the head and exit rows of {path} ({how})")
        elif args.command == "idle":
            _idle(args.device, args.model, args.input_size, args.root, calls=args.calls)
        elif args.command == "defaults":
            for size in args.input_size:
                for model in args.models.split(","):
                    for device, role, threads in DEFAULT_DEVICES:
                        path = profiler.measure_to_file(model, size, device, root=args.root, role=role,
                                                        threads=threads, ratios=args.ratios, repeats=args.repeats,
                                                        warmup=args.warmup, min_ms=args.min_ms)
                        print(f"wrote {path} ({profiler.read_json(path)['meta']['seconds']} s)")
                        _overhead(device, model, size, args.root)
                        _idle(device, model, size, args.root)
            for name, source, factor in DEFAULT_EMULATED:  # copies the source's overhead rows unscaled
                for path in profiler.emulate(source, factor, name, args.root, args.input_size):
                    print(f"wrote {path}")
        elif args.command == "validate":
            device = load_profile(args.device, args.model, args.input_size, args.root)
            server = load_profile(args.server, args.model, args.input_size, args.root)
            table = profiler.validate(device, server, repeats=args.repeats, min_ms=args.min_ms)
            print(table.to_string(index=False))
            summary = profiler.summarize(table)
            print(f"{args.model} {args.input_size}px, {device.device} + {server.device}: "
                  f"APE median {summary['median_ape']}%, worst {summary['max_ape']}% "
                  f"(device side {summary['median_device_ape']}% / {summary['max_device_ape']}%, "
                  f"server side {summary['median_server_ape']}% / {summary['max_server_ape']}%)")
            print(profiler.environment_note())
            if args.csv:
                Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(args.csv, index=False)
                print(f"wrote {args.csv}")
        elif args.command == "bundle":
            _bundle(args)
        elif args.command == "check":
            _check(args)
        else:
            _list(args.root)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

