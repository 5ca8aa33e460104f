

# The extension's module, imported when the component is built.
import @MODULE@ as _user


def _module():
    return _user


def _file():
    return "@MODULE@.py"


def _vsn():
    return "@VSN@"
