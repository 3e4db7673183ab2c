"""The commands for humans: ``publish``/``unpublish`` against a running driver, ``inspect``,
``cache ls``/``cache gc`` and ``describe``.

``__main__.py`` only wires their arguments; each parser names its handler as
``module.function`` of this package, imported when run, so ``serve`` and ``fuse`` never
load them. A failure a person can act on (a driver error, a gRPC status from the
driver) is one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from csi_driver import errors


def run(args: argparse.Namespace, *context: object) -> int:
    """Run ``args.handler`` with ``args`` and whatever else it takes (``context``)."""
    import grpc  # here, not at the top: the flag checks in ``cli.flags`` load this package, and
    # ``serve``'s and the FUSE view's start-up must not pay for gRPC through it

    module, _, function = args.handler.partition(".")
    handler = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    try:
        return handler(args, *context)
    except errors.DriverError as exc:
        print(f"{args.prog}: {exc.code}: {exc.message}", file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"{args.prog}: the driver answered {exc.code().name}: {exc.details()}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
