

from wit_world import exports as _exports


_NAMES = []


def _names():
    """The module's public functions, listed at the first call."""
    if not _NAMES:
        module = _module()
        _NAMES.extend(sorted(
            name
            for name, value in vars(module).items()
            if callable(value)
            and not name.startswith("_")
            and name != "vsn"
            and getattr(value, "__module__", None) == module.__name__
            and not isinstance(value, type)
        ))
    return _NAMES


class Dynamic(_exports.Dynamic):
    def functions(self):
        return _names()

    def invoke(self, function, args):
        if function not in _names():
            raise Err(f"{_file()} has no function {function}")
        try:
            value = json.loads(args)
        except ValueError as err:
            raise Err(f"the arguments are not JSON ({err})") from None
        try:
            result = _apply(function, getattr(_module(), function), value)
        except Exception as err:
            raise Err(_failure(err)) from None
        return _json_out(function, result)
