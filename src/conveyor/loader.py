"""Find the user's app from ``module:attribute`` (``--app`` or ``CONVEYOR_APP``)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from conveyor.core.app import Conveyor
from conveyor.core.errors import ConfigurationError


def load_app(spec: str | None) -> Conveyor:
    """Import ``module:attribute`` and return the ``Conveyor`` it names."""
    spec = spec or os.environ.get("CONVEYOR_APP")
    if not spec:
        raise ConfigurationError("no app given: pass --app module:attribute or set CONVEYOR_APP")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app must look like 'module:attribute', got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the app may live in the working directory
    module = _import(module_name)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"the app module {module_name!r} has no attribute {attribute!r}") from None
    except Exception as exc:  # a module __getattr__ (PEP 562) that builds the app lazily, and failed
        raise ConfigurationError(
            f"cannot get {attribute!r} from the app module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(app, Conveyor):
        raise ConfigurationError(f"{spec!r} is not a Conveyor app (got {type(app).__name__})")
    return app


def _import(module_name: str) -> ModuleType:
    """The app module; whatever its import raises (a missing package, a SyntaxError, its own
    ``RuntimeError``) is the app's configuration at fault, so a ``ConfigurationError`` naming it."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from None
    except (KeyboardInterrupt, SystemExit):
        raise  # Ctrl-C; script code that exits is told apart by the command line
    except BaseException as exc:  # its own BaseException too: a traceback got past the command line
        raise ConfigurationError(
            f"cannot import the app module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
