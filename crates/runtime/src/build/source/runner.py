

# A runner: the extension's source is not built in but handed over as data.
# The node writes it into _SLOT's bytes in the component (after the marker:
# eight decimal digits of length, a JSON header line, the source), and the
# first call of an instance runs it. Only modules imported here (the standard
# library's usual ones) can be imported by it; a source that needs another
# fails to load, and the node then builds it whole (crates/runtime/src/build/source.rs).
import sys
import types

import base64, bisect, collections, copy, dataclasses, datetime, decimal, difflib  # noqa: E401
import enum, fractions, functools, hashlib, heapq, itertools, math, operator  # noqa: E401
import random, re, statistics, string, textwrap, time, typing, uuid  # noqa: E401

import zest  # noqa: F401  (the extension's `import zest` finds it loaded)

_MARK = bytes(b ^ 0x2A for b in @MARK@)
# Made in place: no temporary object holding the marker and the empty slot
# is left in the snapshot for the node to mistake for the slot.
_SLOT = bytearray(len(_MARK) + 8 + @SLOT@)
_SLOT[len(_MARK):] = b"#" * (8 + @SLOT@)
_SLOT[len(_MARK):len(_MARK) + 8] = b"00000000"
_SLOT[:len(_MARK)] = _MARK
_loaded = None
_meta = {"module": "extension", "vsn": ""}


def _module():
    global _loaded, _meta
    if _loaded is None:
        start = len(_MARK)
        size = int(bytes(_SLOT[start:start + 8]))
        header, _, source = bytes(_SLOT[start + 8:start + 8 + size]).partition(b"\n")
        _meta = json.loads(header)
        module = types.ModuleType(_meta["module"])
        module.__file__ = _file()
        sys.modules[_meta["module"]] = module
        exec(compile(source, _file(), "exec"), module.__dict__)
        _loaded = module
    return _loaded


def _file():
    return _meta["module"] + ".py"


def _vsn():
    _module()
    return _meta["vsn"]
