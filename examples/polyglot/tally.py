"""The `tally` process in Python: built by componentize-py against the world
`server` of zest:guest. Same messages, replies and state as `tally.rs`.

Messages: {"add": N} adds N, anything else reads. Every reply is the state,
{"count": N, "langs": [...]}: the languages the count has lived in.
"""
import json

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host

LANG = "python"

# The process's state: one instance runs one process.
state = {"count": 0, "langs": []}


class WitWorld(wit_world.WitWorld):
    def vsn(self) -> str:
        return "tally-python"


class Process(exports.Process):
    def init(self, args):
        state["count"] = json.loads(args).get("start", 0)
        state["langs"] = [LANG]

    def handle(self, message):
        message = json.loads(message)
        if isinstance(message, dict) and isinstance(message.get("add"), int):
            state["count"] += message["add"]
        return json.dumps(state)

    def save_state(self):
        return json.dumps(state)

    def code_change(self, old_vsn, direction, old_state, extra):
        """Takes over the state another build saved, in whatever language."""
        old = json.loads(old_state)
        if not isinstance(old.get("count"), int):
            raise Err(f"the state has no count: {old_state}")
        state["count"] = old["count"]
        state["langs"] = old.get("langs", []) + [LANG]
        host.log(2, f"tally in {LANG} took over {old_state} from {old_vsn}")
