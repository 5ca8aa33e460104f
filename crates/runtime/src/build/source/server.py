

from wit_world import exports as _exports


def _run(function, *args):
    try:
        return getattr(_module(), function)(*args)
    except Exception as err:
        raise Err(_failure(err)) from None


class Process(_exports.Process):
    def init(self, args):
        _run("init", json.loads(args))

    def handle(self, message):
        return _json_out("handle", _run("handle", json.loads(message)))

    def save_state(self):
        try:
            return _json_out("save_state", _run("save_state"))
        except Err as err:
            # save-state cannot fail in the WIT: a trap fails the migration.
            raise RuntimeError(err.value) from None

    def code_change(self, old_vsn, direction, state, extra):
        way = "down" if direction.name == "DOWN" else "up"
        _run("code_change", old_vsn, way, json.loads(state), json.loads(extra))
