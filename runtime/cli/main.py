"""The `vfpga` command line.

    vfpga compile model.onnx --board u200 -o model.ifp [--calibration data.npy|.npz]
                  [--input-shape 1,3,224,224] [--no-cache] [--no-fallback]
    vfpga run model.ifp --input x.npy [--board u200] [-o out.npy] [--check]
    vfpga info [model.ifp] [--board u200]
    vfpga cache [--clear]
    vfpga demo [--board u200]
    vfpga serve [--board u200] [--host 127.0.0.1] [--port 8000] [--grpc-port 8001] [--admin-token T]
                [--quotas quotas.json] [--max-cores N] [--max-pending N] [--max-request-bytes N]
                [--ray [ADDRESS|auto] --boards u200:3[,zcu104:1]]
    vfpga calibrate --board u200 [--out FILE] [--core N]

User errors (missing files, another board, bad arrays) print one message on
stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import warnings

import numpy as np


class UsageError(ValueError):
    """A command line whose files or arrays do not fit."""


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _load_array(path: str, what: str) -> np.ndarray | dict:
    """An .npy array, or the arrays of an .npz by name."""
    if not os.path.isfile(path):
        raise UsageError(f"{what} file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"{what} file {path} is not a numpy .npy/.npz file: {e}") from e
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {k: data[k] for k in data.files}
    return data


# ---------------------------------------------------------------- where nodes run


def _placement(compiled) -> list[tuple[str, str, str]]:
    """(node, op_type, "accelerator" | "cpu" | "folded") for every node of
    the QDQ model when the graph carries its node list (read by the front
    end), else (node, "", where) from the layers' ONNX node names."""
    from vfpga.runtime.compiler import frontend

    try:
        return frontend.placement_report(compiled.graph)
    except (frontend.FrontendError, AttributeError, TypeError):
        pass
    return [(n, "", "cpu" if li.kind == "cpu" else "accelerator") for li in compiled.layers for n in li.onnx_nodes]


def _print_placement(compiled, indent: str = "  ") -> None:
    rows = _placement(compiled)
    typed = any(op for _, op, _ in rows)
    head = f"{len(rows)} nodes of the quantized ONNX model" if typed else "ONNX nodes of the layers"
    print(f"{indent}where each node runs ({head}):")
    for where in ("accelerator", "cpu", "folded"):
        names = [(n, op) for n, op, w in rows if w == where]
        if where == "folded" and not names:
            continue
        line = f"{indent}  {where} ({len(names)})"
        if typed and names:
            ops: dict[str, int] = {}
            for _, op in names:
                ops[op] = ops.get(op, 0) + 1
            line += ": " + ", ".join(f"{op} x{k}" for op, k in sorted(ops.items(), key=lambda kv: -kv[1]))
        print(line if names or where != "cpu" else line + ": none")
        if where != "folded" and names:
            body = ", ".join(f"{n} ({op})" if typed and where == "cpu" else n for n, op in names)
            print(textwrap.fill(body, width=100, initial_indent=f"{indent}    ", subsequent_indent=f"{indent}    "))
    from vfpga.runtime.compiler import placement

    share = placement.mac_share(compiled)
    print(f"{indent}work: {share.describe()}")
    for node, why in share.reasons.items():
        print(textwrap.fill(f"{node} on the host: {why}", width=100, initial_indent=f"{indent}    ",
                            subsequent_indent=f"{indent}      "))


def _segment_lines(c) -> list[str]:
    return [
        f"activations     @ 0x{0:08x}  {c.activation_bytes:>10} bytes  (reused by liveness)",
        f"weights+params  @ 0x{c.const_offset:08x}  {len(c.consts):>10} bytes",
        f"program         @ 0x{c.program_offset:08x}  {c.program.nbytes:>10} bytes  ({c.n_insns} instructions)",
    ]


def _frame_counts(c) -> tuple[int, int]:
    """Frames of the one-core program and frames in all tiling variants."""
    linear = sum(li.frames for li in c.layers)
    return linear, len(c.frames)


def _counts(c) -> str:
    linear, total = _frame_counts(c)
    insns = sum(p.n_insns for p in c.parts if p.kind == "accel")
    parts = sum(p.kind == "accel" for p in c.parts)
    text = f"{linear} frames and {insns} instructions in {parts} accelerator part(s) on one core"
    if total > linear:
        text += f"; {total} frames and {c.n_insns} instructions with the tiling variants for more cores"
    return text


# ---------------------------------------------------------------- compile


def _parse_shape(text: str | None):
    if text is None:
        return None
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise UsageError(f"--input-shape {text!r}: expected comma-separated integers such as 1,3,224,224") from None
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r}: expected four positive dims N,C,H,W such as 1,3,224,224")
    return dims


def _calibration(path: str | None):
    if path is None:
        return None
    data = _load_array(path, "calibration")
    arrays = [data[k] for k in sorted(data)] if isinstance(data, dict) else [data]
    samples = []
    for a in arrays:
        if not np.issubdtype(a.dtype, np.floating):
            raise UsageError(f"calibration file {path}: arrays must be float (float32 NCHW), got {a.dtype}")
        if a.ndim == 4 and a.shape[0] > 1:
            samples.extend(a[i:i + 1] for i in range(a.shape[0]))
        else:
            samples.append(a)
    if not samples:
        raise UsageError(f"calibration file {path} holds no arrays")
    return samples


def _compile(args) -> int:
    from vfpga import overlay
    from vfpga.runtime.compiler import cache, ifp

    cfg = overlay.load(args.board)
    if not os.path.isfile(args.model):
        raise UsageError(f"model file not found: {args.model}")
    if ifp.is_ifp(args.model):
        raise UsageError(f"{args.model} is already a compiled IFP file; `vfpga info {args.model}` describes it")
    shape = _parse_shape(args.input_shape)
    calibration = _calibration(args.calibration)
    out = args.output or os.path.splitext(args.model)[0] + ".ifp"
    store = cache.CompileCache(args.cache_dir, enabled=False if args.no_cache else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cache.compile_with_cache(args.model, cfg, calibration, shape, cache=store,
                                     fallback=not args.no_fallback)
    for w in caught:
        if issubclass(w.category, (UserWarning, RuntimeWarning)):
            print(f"vfpga compile: warning: {w.message}", file=sys.stderr)
    c = r.compiled
    ifp.save(c, out, config=cfg, source=r.source)
    src = r.source
    print(f"vfpga compile: {args.model} -> {out} for {c.board} (compile cache: {r.cache})")
    print(f"  model: {src.get('onnx_nodes', '?')} ONNX nodes, input {src.get('input_shape')}, "
          f"calibration {src.get('calibration', '?')}")
    accel_layers = sum(li.kind != "cpu" for li in c.layers)
    print(f"  layers: {len(c.layers)} ({accel_layers} accelerator, {len(c.layers) - accel_layers} cpu)")
    print(f"  code: {_counts(c)}")
    print(f"  segment: {_kib(c.segment_size)}")
    for line in _segment_lines(c):
        print(f"    {line}")
    if r.cache == "hit":
        print(f"  time: {_ms(r.seconds)} (cache hit: quantization and static stage skipped; "
              f"they took {_ms(src.get('quantize_seconds', 0))} and {_ms(c.compile_seconds)})")
    else:
        print(f"  time: {_ms(r.seconds)} (quantization {_ms(src.get('quantize_seconds', 0))}, "
              f"static stage {_ms(c.compile_seconds)})")
    _print_placement(c)
    print(f"  wrote {out} ({_kib(os.path.getsize(out))})")
    return 0


# ---------------------------------------------------------------- run


def _onnx_shape(t) -> tuple[int, ...]:
    h, w, c = t.shape
    return tuple(t.onnx_shape) if t.onnx_shape is not None else (1, c, h, w)


def _inputs(path: str, tensor) -> tuple[list[np.ndarray], bool]:
    """The requests in an input file: float arrays in the model's ONNX
    layout (one, or N stacked on the batch axis), or int8 arrays already
    quantized in HWC. Returns (arrays, quantized)."""
    data = _load_array(path, "input")
    if isinstance(data, dict):
        if len(data) == 1:
            data = next(iter(data.values()))
        elif tensor.name in data:
            data = data[tensor.name]
        else:
            raise UsageError(f"input file {path} holds arrays {sorted(data)}; expected one array or one named "
                             f"{tensor.name!r}")
    onnx_shape = _onnx_shape(tensor)
    hwc = tuple(tensor.shape)
    expect = (f"float32 {list(onnx_shape)} (ONNX layout; or N of them stacked on axis 0) or int8 {list(hwc)} "
              f"(quantized HWC)")
    if np.issubdtype(data.dtype, np.floating):
        if data.shape == onnx_shape[1:]:
            data = data[None]
        if data.ndim == len(onnx_shape) and data.shape[1:] == onnx_shape[1:] and data.shape[0] >= 1:
            return [data[i:i + 1].astype(np.float32) for i in range(data.shape[0])], False
    elif data.dtype == np.int8:
        if data.shape == hwc:
            return [data], True
        if data.ndim == 4 and data.shape[1:] == hwc and data.shape[0] >= 1:
            return list(data), True
    raise UsageError(f"input {path}: the model takes {expect}; got {data.dtype} {list(data.shape)}")


def _classifier(shape) -> bool:
    return sum(d > 1 for d in shape) == 1 and shape[0] == 1 and max(shape) > 1


def _run(args) -> int:
    from vfpga.runtime import tenants
    from vfpga.runtime.compiler import frontend, ifp
    from vfpga.runtime.hw import golden

    if not os.path.isfile(args.model):
        raise UsageError(f"IFP file not found: {args.model}")
    if not ifp.is_ifp(args.model):
        hint = f"; compile it first: vfpga compile {args.model}" if args.model.endswith(".onnx") else ""
        raise UsageError(f"{args.model} is not an IFP file{hint}")
    compiled = ifp.load(args.model, board=args.board)
    graph = compiled.graph
    in_tensor = graph.tensors[graph.inputs[0]]
    xs, quantized = _inputs(args.input, in_tensor)

    accel = tenants.Accelerator(compiled.board, emulate=True)
    try:
        tenant = accel.deploy(compiled, name=os.path.splitext(os.path.basename(args.model))[0])
        outs: list[list[np.ndarray]] = []
        infos = []
        golden_exact = golden_lsb = 0
        golden_note = ""
        for x in xs:
            x_q = x if quantized else frontend.quantize_input(x, in_tensor)
            ys, info = tenant.run_quantized(x_q)
            outs.append(ys)
            infos.append(info)
            if args.check and not golden_note:
                try:
                    ref = golden.run_graph(graph, x_q)
                    golden_exact += all(np.array_equal(y, ref[n]) for y, n in zip(ys, graph.outputs))
                    golden_lsb = max([golden_lsb] + [float(np.abs(y.astype(np.float64) - ref[n]).max())
                                                     for y, n in zip(ys, graph.outputs)])
                except golden.GoldenError as e:
                    golden_note = f"not available for this graph ({e})"
        cfg = accel.config
    finally:
        accel.close()

    results = {}
    for k, name in enumerate(graph.outputs):
        t = graph.tensors[name]
        results[name] = np.concatenate([frontend.dequantize_output(o[k], t) for o in outs], axis=0)
    n = len(xs)
    kind = "int8 HWC (quantized)" if quantized else "float32"
    print(f"vfpga run: {args.model} on the emulated {compiled.board} "
          f"(1 of {cfg['cnn_core']['count']} CNN cores), {n} input{'s' if n != 1 else ''} from {args.input} ({kind})")
    for name, y in results.items():
        print(f"  output {name}: {y.dtype} {list(y.shape)}, min {y.min():.4g}, max {y.max():.4g}, "
              f"mean {y.mean():.4g}")
        one = _onnx_shape(graph.tensors[name])
        if _classifier(one):
            for i in range(min(n, 8)):
                flat = y[i].ravel()
                top = np.argsort(-flat, kind="stable")[:5]
                label = f"    top-5{f' [{i}]' if n > 1 else ''}: "
                print(label + ", ".join(f"{j} ({flat[j]:.4g})" for j in top))
            if n > 8:
                print(f"    ... {n - 8} more")
    info = infos[-1]
    host = sum(i.host_seconds for i in infos) / n
    print(f"  modeled: {info.modeled_cycles} cycles = {info.modeled_seconds * 1e6:.1f} us per image at "
          f"{cfg['clock_mhz']} MHz (cycle model, emulation)")
    print(f"  host: {_ms(host)} per image (emulation)")
    status = 0
    if args.check:
        if golden_note:
            print(f"  golden model: {golden_note}")
        else:
            diff = "" if golden_exact == n else f" (max difference {golden_lsb:g} LSB)"
            print(f"  golden model: {golden_exact}/{n} bit-exact{diff}")
            status = 0 if golden_exact == n else 1
    if args.output:
        if args.output.endswith(".npz"):
            np.savez(args.output, **results)
        elif len(results) == 1:
            np.save(args.output, next(iter(results.values())))
        else:
            raise UsageError(f"the model has {len(results)} outputs; save them with -o {args.output}.npz")
        print(f"  wrote {args.output}")
    return status


# ---------------------------------------------------------------- info


def _info_boards(args) -> int:
    from vfpga import overlay

    boards = [args.board] if args.board else overlay.available()
    for name in boards:
        cfg = overlay.load(name)
        core, ddr = cfg["cnn_core"], cfg["ddr"]
        print(f"{name}: {cfg['description']}")
        print(f"  {core['count']} CNN cores of {core['icp']}x{core['ocp']} int8 MACs at {cfg['clock_mhz']} MHz; "
              f"buffers ibuf {core['ibuf_bytes'] // 1024} KiB, wbuf {core['wbuf_bytes'] // 1024} KiB, "
              f"acc {core['acc_words']} words, obuf {core['obuf_bytes'] // 1024} KiB")
        print(f"  DDR: {ddr['banks']} bank(s) of {ddr['bank_bytes'] >> 20} MiB, "
              f"{ddr['bank_gbytes_per_s']} GB/s each, {ddr['axi_bytes'] * 8}-bit AXI")
    return 0


def _info_ifp(args) -> int:
    from vfpga.runtime.compiler import ifp

    if not os.path.isfile(args.file):
        raise UsageError(f"IFP file not found: {args.file}")
    meta = ifp.read_info(args.file)
    try:
        ifp.check_compatible(args.file, board=args.board)
        status = "deployable here"
    except ifp.IfpBoardError as e:
        if args.board is not None and meta.board != args.board:
            raise
        status = f"NOT deployable: {e}"
    except ifp.IfpVersionError as e:
        status = f"NOT deployable: {e}"
    c = ifp.load(args.file, verify=False)
    print(f"{args.file}: vfpga IFP format {meta.format_version}, {_kib(meta.size_bytes)}, created {meta.created}")
    print(f"  compiled by vfpga {meta.vfpga_version} (ISA {meta.isa_version}) for board {meta.board} "
          f"(config sha256 {str(meta.config_sha256)[:12]}): {status}")
    src = meta.source
    if src:
        print(f"  source: {src.get('model', '?')}" + (f" (sha256 {src['model_sha256'][:12]})" if "model_sha256" in src
                                                     else "")
              + (f", {src['onnx_nodes']} ONNX nodes" if "onnx_nodes" in src else "")
              + (f", calibration {src['calibration']}" if "calibration" in src else ""))
    for label, names in (("input", c.graph.inputs), ("output", c.graph.outputs)):
        for name in names:
            t = c.graph.tensors[name]
            print(f"  {label} {name}: {list(_onnx_shape(t))} (int8 HWC {'x'.join(map(str, t.shape))}, "
                  f"scale {t.scale:.6g}, zero point {t.zero_point})")
    print()
    print(f"  {'#':>3}  {'layer':<24} {'kind':<6} {'output HxWxC':<13} {'frames':>6} {'insns':>6} "
          f"{'runs on':<11} onnx nodes")
    for li in c.layers:
        shape = "x".join(map(str, li.out_shape))
        where = "cpu" if li.kind == "cpu" else "accelerator"
        nodes = ", ".join(li.onnx_nodes) or "-"
        print(f"  {li.index:>3}  {li.name[:24]:<24} {li.kind:<6} {shape:<13} {li.frames:>6} {li.insns:>6} "
              f"{where:<11} {nodes}")
    print()
    print(f"  total: {len(c.layers)} layers; {_counts(c)}")
    print(f"  segment: {_kib(c.segment_size)} ({c.segment_size} bytes)")
    for line in _segment_lines(c):
        print(f"    {line}")
    _print_placement(c)
    return 0


def _info(args) -> int:
    return _info_ifp(args) if args.file else _info_boards(args)


# ---------------------------------------------------------------- cache


def _cache(args) -> int:
    from vfpga.runtime.compiler import cache

    store = cache.CompileCache(args.cache_dir)
    entries = store.entries()
    size = sum(os.path.getsize(p) for p in entries if os.path.isfile(p))
    state = "on" if store.enabled else "off (VFPGA_CACHE=0)"
    print(f"vfpga compile cache: {store.directory} ({state}): {len(entries)} entries, {_kib(size)}")
    if args.clear:
        print(f"  removed {store.clear()} entries")
    return 0


# ---------------------------------------------------------------- entry point


def _demo(args) -> int:
    from vfpga.runtime.cli.demo import run_demo

    r = run_demo(args.board, args.inputs, args.seed, headline=not args.no_headline)
    shared_ok = r.sharing is None or r.sharing.correct == r.sharing.total
    return 0 if r.golden_exact == r.inputs and r.vs_ort.max_lsb <= 1 and shared_ok else 1


def _bench(args) -> int:
    from vfpga.runtime.experiments.report import run_bench

    try:
        run_bench(args.out, quick=args.quick, only=[s for s in args.only.split(",") if s] if args.only else None)
    except ValueError as e:  # an unknown experiment name
        print(f"vfpga bench: {e}", file=sys.stderr)
        return 2
    return 0


def _calibrate(args) -> int:
    from vfpga.runtime.cli.calibrate import run

    return run(args.board, args.out, args.core)


def _serve(args) -> int:
    import logging

    try:
        from vfpga.runtime.serving import Quota, ServerConfig, config, server
    except ImportError as e:
        raise RuntimeError(f"serving needs the serve extra (pip install -e \".[serve]\"): {e}") from e

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.boards is not None and args.ray is None:
        raise UsageError("--boards needs --ray (a cluster of boards, each a Ray actor)")
    boards = None
    if args.ray is not None:
        if args.boards is None:
            raise UsageError("--ray needs --boards KIND:COUNT[,KIND:COUNT...], e.g. --boards u200:3")
        from vfpga.runtime.cluster.pool import parse_boards

        boards = parse_boards(args.boards)
    base = Quota(args.max_cores, args.max_pending, args.max_request_bytes)
    default, per_model = config.read_quotas(args.quotas, base) if args.quotas else (base, {})
    cfg = ServerConfig(board=args.board, host=args.host, port=args.port,
                       grpc_port=None if args.grpc_port < 0 else args.grpc_port, admin_token=args.admin_token,
                       quota=default, model_quotas=per_model, max_model_bytes=args.max_model_bytes,
                       shutdown_grace_s=args.grace,
                       bank_capacity=args.bank_mib << 20 if args.bank_mib else None,
                       boards=boards, ray_address=args.ray or None)
    return server.run(cfg)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="vfpga", description="Multi-tenant DNN inference on one FPGA.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a small ONNX CNN end to end on the emulated board")
    d.add_argument("--board", default="u200")
    d.add_argument("--inputs", type=int, default=8, help="random inputs to compare (default 8)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-headline", action="store_true", help="skip the closing headline table (two zoo models "
                                                              "compiled on first use)")
    d.set_defaults(func=_demo)

    c = sub.add_parser("compile", help="compile an ONNX model into an IFP file")
    c.add_argument("model", help="ONNX model (float: quantized here; QDQ: taken as it is)")
    c.add_argument("--board", default="u200", help="board config to compile for (default u200)")
    c.add_argument("-o", "--output", help="IFP file to write (default: the model's name with .ifp)")
    c.add_argument("--calibration", help="calibration inputs: .npy (N stacked samples) or .npz (one or more "
                                         "arrays); default: generated random inputs, with a warning")
    c.add_argument("--input-shape", help="fix a dynamic input shape, e.g. 1,3,224,224")
    c.add_argument("--no-fallback", action="store_true", help="fail on ops the accelerator lacks instead of "
                                                              "running them on the host CPU")
    c.add_argument("--no-cache", action="store_true", help="neither use nor fill the compile cache")
    c.add_argument("--cache-dir", help="compile cache directory (default $VFPGA_CACHE_DIR or ~/.cache/vfpga)")
    c.set_defaults(func=_compile)

    r = sub.add_parser("run", help="run an IFP file on the emulated board")
    r.add_argument("model", help="IFP file from `vfpga compile`")
    r.add_argument("--input", required=True, help=".npy input: float32 in the model's ONNX layout "
                                                  "(N stacked on axis 0 for N requests) or int8 quantized HWC")
    r.add_argument("--board", default=None, help="board to run on (default: the IFP's board; another one is "
                                                 "an error)")
    r.add_argument("-o", "--output", help="save the float output(s): .npy, or .npz for several outputs")
    r.add_argument("--check", action="store_true", help="also compare with the golden model (exit 1 if not "
                                                        "bit-exact)")
    r.set_defaults(func=_run)

    i = sub.add_parser("info", help="describe an IFP file, or the board configurations")
    i.add_argument("file", nargs="?", help="IFP file (without it: the boards)")
    i.add_argument("--board", default=None)
    i.set_defaults(func=_info)

    b = sub.add_parser("bench", help="run the experiments (modeled) and write a report with tables and plots")
    b.add_argument("--quick", action="store_true", help="a small version (fewer requests, smaller models)")
    b.add_argument("--out", default="vfpga-bench", help="output directory (default ./vfpga-bench)")
    b.add_argument("--only", default=None, help="comma-separated experiments to run (e.g. rnn,batching); "
                                                "prints their tables")
    b.set_defaults(func=_bench)

    s = sub.add_parser("serve", help="serve the board's tenants over the Open Inference Protocol (HTTP and gRPC)")
    s.add_argument("--board", default="u200")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0: any free port)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0: any free; -1: none)")
    s.add_argument("--admin-token", default=None, help="token for model control and /metrics (default "
                                                       "$VFPGA_ADMIN_TOKEN, else one is generated and logged)")
    s.add_argument("--quotas", help="JSON quota file: {\"default\": {...}, \"models\": {name: {...}}}")
    s.add_argument("--max-cores", type=int, default=None, help="cores one tenant may hold (default: the pool)")
    s.add_argument("--max-pending", type=int, default=64, help="requests one tenant may queue (default 64)")
    s.add_argument("--max-request-bytes", type=int, default=16 << 20,
                   help="bytes of one inference request (default 16 MiB)")
    s.add_argument("--max-model-bytes", type=int, default=256 << 20,
                   help="bytes of one load request (default 256 MiB)")
    s.add_argument("--grace", type=float, default=30.0, help="SIGTERM: seconds in-flight requests may take")
    s.add_argument("--bank-mib", type=int, default=None, help="emulated board: MiB per DDR bank (default 1024)")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="front a cluster of boards, each a Ray actor: without ADDRESS start Ray here (the boards "
                        "emulated where no card is), 'auto' or HOST:PORT join a running Ray cluster")
    s.add_argument("--boards", default=None, metavar="KIND:COUNT[,...]",
                   help="the cluster's boards with --ray, e.g. u200:3,zcu104:1 (hosts declare vfpga_<kind> "
                        "resources)")
    s.set_defaults(func=_serve)

    cal = sub.add_parser("calibrate", help="fit the cycle model to a board's counters (microbenchmarks per "
                                           "instruction class) and write the calibration file it loads")
    cal.add_argument("--board", required=True)
    cal.add_argument("--out", default=None, help="calibration file (default $VFPGA_CALIBRATION, else "
                                                 "overlay/configs/<board>.calibration.json)")
    cal.add_argument("--core", type=int, default=0, help="CNN core to run on (default 0)")
    cal.set_defaults(func=_calibrate)

    k = sub.add_parser("cache", help="show or clear the compile cache")
    k.add_argument("--clear", action="store_true")
    k.add_argument("--cache-dir", default=None)
    k.set_defaults(func=_cache)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        try:
            sys.stdout = open(os.devnull, "w")  # the closed stream would fail again at exit
        except OSError:
            pass
        return 0
    except (ValueError, RuntimeError, OSError) as e:  # user-facing errors carry clear messages
        print(f"vfpga {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
