#!/usr/bin/env python3
"""Entry point of one DSPex.NativePool Python worker process.

The Rust NIF starts this file as

    python3 <repo>/priv/python/dspex_worker.py --worker-id ID --pool POOL \
        [--handlers MODULE] [--max-frame BYTES] [--concurrency N]

with the request stream on fd 3 and the reply stream on fd 4 (see
``dspex_bridge/protocol.py`` for the wire format).  This file only parses the
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
    parser.add_argument("--worker-id", required=True, help="worker id, e.g. '3'")
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
    if not (1 <= args.concurrency <= 4096):
        parser.error("--concurrency must be between 1 and 4096")
    if args.max_frame is not None and not (1 <= args.max_frame <= 0xFFFFFFFF):
        parser.error("--max-frame must be between 1 and 4294967295")
    return args


def main(argv=None):
    args = _parse_args(sys.argv[1:] if argv is None else argv)

    from dspex_bridge import worker
    from dspex_bridge.protocol import DEFAULT_MAX_FRAME

    worker.run(
        worker_id=args.worker_id,
        pool=args.pool,
        handlers=args.handlers,
        max_frame=args.max_frame if args.max_frame is not None else DEFAULT_MAX_FRAME,
        concurrency=args.concurrency,
    )


if __name__ == "__main__":
    main()
