"""The `vfpga` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import run_demo

    r = run_demo(args.board, args.inputs, args.seed)
    return 0 if r.golden_exact == r.inputs and r.vs_ort.max_lsb <= 1 else 1


def _info(args) -> int:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="vfpga", description="Multi-tenant DNN inference on one FPGA.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run a small ONNX CNN end to end on the emulated board")
    d.add_argument("--board", default="u200")
    d.add_argument("--inputs", type=int, default=8, help="random inputs to compare (default 8)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="describe the board configurations")
    i.add_argument("--board", default=None)
    i.set_defaults(func=_info)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, OSError) as e:  # user-facing errors carry clear messages
        print(f"vfpga {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
