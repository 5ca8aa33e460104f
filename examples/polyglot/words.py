"""`words`, the Python module of the polyglot app: built by componentize-py
against the world `plugin` of zest:guest, so it serves its functions by name
through `dynamic` (JSON text in, JSON text out).

    split "Hot code, hot swap"  ->  ["hot", "code", "hot", "swap"]
    headline "..."              ->  fmt.report's line (JavaScript), in capitals
"""
import json
import re

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host


def call(module, function, *args):
    """Another module's function, whatever its language: JSON values in and
    out; its failure raises Err with the node's words."""
    return json.loads(host.call(module, function, json.dumps(list(args))))


def split(text):
    """The text's words, in lower case."""
    return re.findall(r"[a-z0-9']+", text.lower())


def headline(text):
    """The report `fmt` (JavaScript) writes of the text, in capitals; `fmt`
    asks `stats` (Rust), which asks `split` here: one call through all three
    languages."""
    return call("fmt", "report", text).upper()


FUNCTIONS = {"split": split, "headline": headline}


class WitWorld(wit_world.WitWorld):
    def vsn(self) -> str:
        return "words-1"


class Dynamic(exports.Dynamic):
    def functions(self):
        return sorted(FUNCTIONS)

    def invoke(self, function, args):
        if function not in FUNCTIONS:
            raise Err(f"words has no function {function}")
        args = json.loads(args)
        try:
            result = FUNCTIONS[function](*args) if isinstance(args, list) else FUNCTIONS[function](args)
        except Err:
            raise
        except Exception as err:
            raise Err(f"{type(err).__name__}: {err}") from None
        return json.dumps(result)
