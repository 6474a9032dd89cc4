#!/usr/bin/env python3
"""Entry point of one DSPex.NativePool Python worker process.

The Rust NIF starts this file as

    python3 <repo>/priv/python/dspex_worker.py --worker-id ID --pool POOL \
        [--handlers MODULE] [--max-frame BYTES] [--concurrency N]

with the request stream on fd 3 and the reply stream on fd 4 (see
``dspex_bridge/protocol.py`` for the wire format), or, for a pool that forks
its workers from a warm interpreter, as the template

    python3 <repo>/priv/python/dspex_worker.py --template --pool POOL \
        [--preload MODULE]... [--preload-if-installed MODULE]... [...]

with its control socket on fd 3 (see ``dspex_bridge/template.py``).  This file only parses the
command line and hands over to the ``dspex_bridge`` package, so that the
start-up cost and the surface that can break before the worker is running
stay as small as possible.

Exit statuses: 0 when the pool closes the request stream or the parent dies,
2 for a start-up failure (bad arguments, handler module that cannot be
imported or clashes with a built-in, protocol fds missing), 3 when the request
stream can no longer be trusted, and whatever a handler passes to
``SystemExit``.
"""

import os
import sys

# The package lives next to this file.  Python already puts the script's
# directory first on sys.path, but only as the path it was *invoked* with;
# resolving it here keeps the import working through symlinks and any cwd.
_HERE = os.path.dirname(os.path.realpath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _parse_args(argv):
    import argparse

    parser = argparse.ArgumentParser(
        prog="dspex_worker.py",
        description="DSPex.NativePool Python worker (protocol on fds 3 and 4).",
    )
    parser.add_argument("--worker-id", help="worker id, e.g. '3'")
    parser.add_argument(
        "--template",
        action="store_true",
        help="be the template workers are forked from (control socket on fd 3)",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="with --template: a module to import before forking",
    )
    parser.add_argument(
        "--preload-if-installed",
        action="append",
        default=[],
        metavar="MODULE",
        help="with --template: a module to import before forking, if it is installed",
    )
    parser.add_argument("--pool", required=True, help="name of the owning pool")
    parser.add_argument(
        "--handlers",
        default=None,
        metavar="MODULE",
        help="importable module whose public functions become commands",
    )
    parser.add_argument(
        "--max-frame",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest frame payload accepted or sent (default 67108864)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="requests run at once (default 1)",
    )
    args = parser.parse_args(argv)
    if not args.template and args.worker_id is None:
        parser.error("--worker-id is required (or --template)")
    if not (1 <= args.concurrency <= 4096):
        parser.error("--concurrency must be between 1 and 4096")
    if args.max_frame is not None and not (1 <= args.max_frame <= 0xFFFFFFFF):
        parser.error("--max-frame must be between 1 and 4294967295")
    return args


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    from dspex_bridge import worker
    from dspex_bridge.protocol import DEFAULT_MAX_FRAME

    if args.template:
        from dspex_bridge import template

        template.run(
            pool=args.pool,
            handlers=args.handlers,
            max_frame=args.max_frame if args.max_frame is not None else DEFAULT_MAX_FRAME,
            concurrency=args.concurrency,
            preload=args.preload,
            preload_if_installed=args.preload_if_installed,
        )
    worker.run(
        worker_id=args.worker_id,
        pool=args.pool,
        handlers=args.handlers,
        max_frame=args.max_frame if args.max_frame is not None else DEFAULT_MAX_FRAME,
        concurrency=args.concurrency,
    )


if __name__ == "__main__":
    main()
