"""The ``pydiff`` command: ``pydiff bench`` times diffusers' scheduler against pydiff's drop-in: one step
(with a ``torch.compile``d plain-torch peer for DDIM/DDPM) and a whole run of ``set_timesteps`` + every step."""
from __future__ import annotations

import argparse
import json
import sys


def _shape(text: str):
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 1x4x64x64, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be positive, got {text!r}")
    return dims


def _parser():
    from .bench import SAMPLERS
    from .ops.backends import BACKENDS
    p = argparse.ArgumentParser(prog="pydiff", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="per-step time: diffusers vs pydiff on every available backend")
    b.add_argument("--sampler", action="append", choices=SAMPLERS,
                   help="sampler to time (repeatable; default: all)")
    b.add_argument("--shape", type=_shape, default=(1, 4, 64, 64), help="sample shape, e.g. 8x4x128x128")
    b.add_argument("--dtype", default="fp32", choices=["fp16", "bf16", "fp32", "fp64"])
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    b.add_argument("--backend", action="append", choices=BACKENDS,
                   help="pydiff backend(s) to time (repeatable; default: every one available here)")
    b.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per candidate (default 0.3)")
    b.add_argument("--no-peer", action="store_true",
                   help="skip the torch.compile'd plain-torch peer of the DDIM/DDPM step (compiling takes a while)")
    b.add_argument("--whole-run", type=int, default=20, metavar="STEPS",
                   help="also time set_timesteps + STEPS steps, as a pipeline calls them (default 20; 0: skip)")
    b.add_argument("--bandwidth", action="store_true",
                   help="instead: fused step vs a device copy at --shape (memory-bandwidth fraction)")
    b.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as err:  # bad option values: a usage error, not a traceback
        parser.error(str(err))


def _run(args) -> int:
    if args.command == "bench":
        from . import bench
        from .ops import available_backends

        print(f"pydiff bench: backends available here: {', '.join(available_backends())}", flush=True)
        if args.bandwidth:
            rows = bench.bandwidth(shape=args.shape, dtype=args.dtype, device=args.device, backends=args.backend,
                                   min_time=args.min_time)
            print(bench.format_bandwidth(rows))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(bench.rows_as_dicts(rows), f, indent=2)
            return 0
        rows = bench.run(samplers=tuple(args.sampler or bench.SAMPLERS), shape=args.shape, dtype=args.dtype,
                         device=args.device, backends=args.backend, min_time=args.min_time,
                         peer=not args.no_peer, whole_run_steps=args.whole_run)
        print(bench.format_table(rows))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(bench.rows_as_dicts(rows), f, indent=2)
            print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
