"""zest's host functions for a Python extension (CONTRACT.md §13): `import zest`."""
import json as _json

from wit_world.imports import host as _host


def call(module, function, *args):
    """Calls `module.function` on its current version with `args` (JSON
    values) and returns its JSON result; raises RuntimeError with the callee's
    failure."""
    from componentize_py_types import Err

    try:
        return _json.loads(_host.call(module, function, _json.dumps(list(args))))
    except Err as err:
        raise RuntimeError(f"{module}.{function} failed: {err.value}") from None


def log(level, message):
    """0 trace, 1 debug, 2 info, 3 warn, 4 error: into the node's log."""
    _host.log(level, str(message))


def now_ms():
    """Wall-clock milliseconds since the Unix epoch."""
    return _host.now_ms()
