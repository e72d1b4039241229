"""Tasks: a registered function, its options, and validation of its arguments."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin, get_type_hints

import pydantic

from conveyor.core.context import Context
from conveyor.core.errors import InvalidArguments, RegistrationError, ValidationError
from conveyor.core.limits import Limits
from conveyor.serialization import (
    NUL_REFUSED,
    SURROGATE_REFUSED,
    holds_lone_surrogate,
    holds_nul,
    keys_are_text,
    not_json,
)

if TYPE_CHECKING:
    from conveyor.core.app import Conveyor
    from conveyor.core.handle import JobHandle
    from conveyor.core.workflows import Signature

#: Keyword-only options of ``enqueue``; a task may not declare a parameter with these names.
RESERVED = frozenset(
    {"queue", "priority", "delay", "eta", "max_retries", "timeout", "depends_on", "key", "metadata", "webhook"}
)

#: The longest task name: ``POST /v1/jobs`` takes ``task`` and ``GET /v1/jobs`` filters by it up to this.
MAX_TASK_NAME = 200
TASK_NAME_RULE = f"a task name is a str of 1–{MAX_TASK_NAME} characters, without NUL or lone surrogates"


def check_task_name(name: object) -> str:
    """``name``, if it may name a task (one the HTTP API can submit and every engine can store)."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TASK_NAME or "\x00" in name or holds_lone_surrogate(name):
        shown = f"{name[:40]!r}… ({len(name)} characters)" if isinstance(name, str) and len(name) > 60 else repr(name)
        raise RegistrationError(f"invalid task name {shown}: {TASK_NAME_RULE}")
    return name


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Defaults of a task's jobs; each can be overridden per job at enqueue."""

    queue: str = "default"
    priority: int = 0  #: 0–9, 9 first
    max_retries: int = 3
    timeout: float | None = None  #: seconds per attempt; None: no limit
    backoff_base: float = 1.0  #: seconds; retries wait U(0, min(cap, base·2^(attempt-1)))
    backoff_cap: float = 3600.0

    def check(self, where: str) -> None:
        """The ranges ``enqueue`` applies to the same options, so that a task's defaults always pass."""
        if not _integer(self.priority, 0, 9):
            raise RegistrationError(f"{where}: priority must be an integer from 0 to 9")
        if not _integer(self.max_retries, 0, 1000):
            raise RegistrationError(f"{where}: max_retries must be an integer from 0 to 1000")
        if self.timeout is not None and not _number(self.timeout, 0, 7 * 86400):
            raise RegistrationError(f"{where}: timeout must be a positive number of seconds (at most 7 days)")
        if not _number(self.backoff_base, 0, 86400) or not _number(self.backoff_cap, 0, 7 * 86400) \
                or self.backoff_cap < self.backoff_base:
            raise RegistrationError(f"{where}: backoff and backoff_cap must be positive seconds, backoff ≤ backoff_cap")


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any, above: float, high: float) -> bool:
    """A number (not a bool) in (above, high]."""
    return isinstance(value, int | float) and not isinstance(value, bool) and above < value <= high


class Task:
    """A function registered under a name. Call ``enqueue`` to run it in the background."""

    def __init__(
        self,
        app: Conveyor,
        fn: Callable[..., Any],
        name: str,
        options: TaskOptions,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature, self._model = _parameter_model(fn, name)
        given = dict(limits or {})
        #: Global limits (concurrency, rate) of the task's jobs, enforced by the backend.
        self.limits = Limits.build(
            f"task {name!r}",
            self._signature,
            given.get("concurrency_limit"),
            given.get("rate_limit"),
            given.get("limit_key"),
        )
        # JSON values already are what plain annotations (int, str, list[str]…) declare
        self._plain = all(_is_plain(f.annotation) for f in self._model.model_fields.values())
        #: no parameter needs an argument: a call without any binds, and validates, as is
        self._optional_only = all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                                  for p in self._signature.parameters.values())

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # -- arguments ------------------------------------------------------------------------
    def validate(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise ``InvalidArguments`` naming each argument that does not fit the signature."""
        if not args and not kwargs and self._optional_only:
            return  # defaults are not validated (as pydantic does not)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.name}: {exc}", _binding_errors(self._signature, args, kwargs)) from None
        where = {name: f"#/args/{i}" for i, name in enumerate(list(bound.arguments)[: len(args)])}
        try:
            text = json.dumps(bound.arguments, allow_nan=False)
            if not keys_are_text(bound.arguments):
                raise TypeError("a key that is not text")
        except (TypeError, ValueError, RecursionError):
            errors = []
            for name, value in bound.arguments.items():
                at = where.get(name, f"#/kwargs/{name}")
                found = _not_json(value, at)
                if found is not None:
                    pointer, why = found
                    errors.append({"pointer": pointer, "detail": f"{name}{pointer[len(at):]}: {why}"})
        else:
            errors = self._text_errors(bound.arguments, text, where) or self._type_errors(text, where)
        if errors:
            raise InvalidArguments(f"{self.name}: " + "; ".join(e["detail"] for e in errors), errors)

    @staticmethod
    def _text_errors(arguments: Mapping[str, Any], text: str, where: dict[str, str]) -> list[dict[str, str]]:
        """The arguments holding text no engine stores: U+0000, a lone surrogate (rare: looked
        for only when the JSON ``text`` shows their escapes)."""
        errors = []
        for name, value in arguments.items() if "\\u0000" in text or "\\ud" in text else ():
            why = NUL_REFUSED if holds_nul(value) else SURROGATE_REFUSED if holds_lone_surrogate(value) else None
            if why:
                errors.append({"pointer": where.get(name, f"#/kwargs/{name}"), "detail": f"{name}: {why}"})
        return errors

    def _type_errors(self, text: str, where: dict[str, str]) -> list[dict[str, str]]:
        try:
            self._model.model_validate_json(text, strict=True)
        except pydantic.ValidationError as exc:
            out = []
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else ""
                rest = "".join(f"/{part}" for part in err["loc"][1:])
                out.append({"pointer": where.get(name, f"#/kwargs/{name}") + rest, "detail": f"{name}: {err['msg']}"})
            return out
        return []

    def prepare(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Turn stored JSON arguments into the typed values the function declares (models, enums…)."""
        if self._plain:
            return list(args), dict(kwargs)
        bound = self._signature.bind(*args, **kwargs)
        model = self._model.model_validate_json(json.dumps(dict(bound.arguments)))
        for name in bound.arguments:
            param = self._signature.parameters[name]
            if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                bound.arguments[name] = getattr(model, name)
        return list(bound.args), dict(bound.kwargs)

    def limit_fields(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The ``Job`` fields that carry this task's limits for one job's arguments."""
        if not self.limits.active:
            return {}
        return {
            "limit_key": self.limits.resolve(self.name, self._signature, args, kwargs),
            "concurrency_limit": self.limits.concurrency,
            "rate_limit": self.limits.rate,
        }

    def json_schema(self) -> dict[str, Any]:
        """A JSON Schema of the task's parameters (an object keyed by parameter name)."""
        return self._model.model_json_schema()

    def describe(self) -> dict[str, Any]:
        """The task as ``GET /v1/tasks`` lists it."""
        o = self.options
        return {
            "name": self.name,
            "queue": o.queue,
            "priority": o.priority,
            "max_retries": o.max_retries,
            "timeout": o.timeout,
            "concurrency_limit": self.limits.concurrency,
            "rate_limit": {"count": self.limits.rate[0], "per": self.limits.rate[1]} if self.limits.rate else None,
            "async": self.is_async,
            "doc": inspect.getdoc(self.fn),
            "parameters": self.json_schema(),
        }

    # -- enqueue --------------------------------------------------------------------------
    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature for ``chain``/``group``: arguments and options, validated now, enqueued later."""
        from conveyor.core.workflows import Signature

        options = {k: kwargs.pop(k) for k in list(kwargs) if k in RESERVED}
        self.validate(args, kwargs)
        return Signature(self, args, kwargs, options)

    def enqueue(self, *args: Any, **kwargs: Any) -> JobHandle:
        """Submit one job; returns at once. Reserved keywords (queue, priority, delay, …) are options."""
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in RESERVED}
        return self.app.enqueue(self, args, kwargs, **options)

    async def enqueue_async(self, *args: Any, **kwargs: Any) -> JobHandle:
        """``enqueue`` for async callers."""
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in RESERVED}
        return await self.app.enqueue_async(self, args, kwargs, **options)

    def enqueue_many(self, items: Sequence[Mapping[str, Any] | Sequence[Any]], **options: Any) -> list[JobHandle]:
        """Submit many jobs in one round trip: each item is a kwargs mapping or an args sequence."""
        unknown = sorted(set(options) - RESERVED)
        if unknown:
            raise ValidationError(
                f"enqueue_many: unknown option {unknown[0]!r}; the options are {', '.join(sorted(RESERVED))}",
                [{"pointer": f"#/{unknown[0]}", "detail": "not an option"}],
            )
        return self.app.enqueue_many([(self, *_split(item), options) for item in items])


def _not_json(value: Any, pointer: str) -> tuple[str, str] | None:
    """Where in ``value`` (at ``pointer``) the first part that is not JSON is, and why (None if none is)."""
    try:
        found = not_json(value, pointer)
        if found is not None:
            return found[0], f"{found[1]} (Conveyor accepts only JSON arguments)"
        if not keys_are_text(value):
            return pointer, "an object key that is not text is not JSON (json would turn 1 into \"1\")"
        json.dumps(value, allow_nan=False)
    except RecursionError:
        return pointer, f"{type(value).__name__} is nested too deeply to encode as JSON"
    except (TypeError, ValueError):
        return pointer, f"{type(value).__name__} is not JSON (Conveyor accepts only JSON arguments)"
    return None


def _split(item: Mapping[str, Any] | Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, list | tuple):
        return tuple(item), {}
    raise InvalidArguments("enqueue_many items must be mappings (kwargs) or sequences (args)")


_PLAIN = {str, int, float, bool, type(None), list, dict, tuple, Any, inspect.Parameter.empty}


def _is_plain(annotation: Any) -> bool:
    """True for types a JSON value already satisfies as is (no model, enum, date…)."""
    if annotation in _PLAIN:
        return True
    origin = get_origin(annotation)
    if origin in (list, dict, Union, types.UnionType):
        return all(_is_plain(a) for a in get_args(annotation))
    return False


def _may_be_context(hint: Any) -> bool:
    """Whether a parameter annotated ``hint`` can be given the Context (a type it is not, such
    as ``int``, says the task forgot its ``ctx``)."""
    if hint is Any or not isinstance(hint, type):
        return True  # Any, a union, a protocol of typing's: not judged
    try:
        return issubclass(Context, hint)
    except TypeError:
        return True


def _parameter_model(fn: Callable[..., Any], name: str) -> tuple[inspect.Signature, type[pydantic.BaseModel]]:
    """The signature without ``ctx`` and a pydantic model of its parameters."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise RegistrationError(f"task {name!r}: the first parameter must be the Context (ctx)")
    try:
        hints = get_type_hints(fn)
    except Exception as exc:
        raise RegistrationError(f"task {name!r}: cannot resolve type hints: {exc}") from None
    first = hints.get(params[0].name, Any)
    if not _may_be_context(first):  # `def task(n: int)`: n would get the Context, every attempt fail
        raise RegistrationError(f"task {name!r}: the first parameter must be the Context (ctx), "
                                f"not {params[0].name!r} annotated {getattr(first, '__name__', first)}")
    params = params[1:]
    clash = sorted(p.name for p in params if p.name in RESERVED)
    if clash:
        raise RegistrationError(
            f"task {name!r}: parameter name(s) {', '.join(clash)} are reserved for "
            f"enqueue options ({', '.join(sorted(RESERVED))})"
        )
    fields: dict[str, Any] = {}
    for p in params:
        hint = hints.get(p.name, Any)
        if p.kind is p.VAR_POSITIONAL:
            fields[p.name] = (list[hint], [])  # type: ignore[valid-type]
        elif p.kind is p.VAR_KEYWORD:
            fields[p.name] = (dict[str, hint], {})  # type: ignore[valid-type]
        else:
            fields[p.name] = (hint, ... if p.default is p.empty else p.default)
    try:
        model = pydantic.create_model(f"{name}.parameters", **fields)
    except Exception as exc:
        raise RegistrationError(f"task {name!r}: unsupported parameter types: {exc}") from None
    return signature.replace(parameters=params), model


def _binding_errors(
    signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> list[dict[str, str]]:
    """Point at the arguments that cannot be bound at all: missing, unexpected, too many."""
    params = signature.parameters
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_args = any(p.kind is p.VAR_POSITIONAL for p in params.values())
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    errors = []
    if not has_var_args:
        errors += [
            {"pointer": f"#/args/{i}", "detail": f"unexpected positional argument #{i}"}
            for i in range(len(positional), len(args))
        ]
    given = {p.name for p in positional[: len(args)]} | set(kwargs)
    if not has_var_kw:
        errors += [
            {"pointer": f"#/kwargs/{k}", "detail": f"unexpected argument {k!r}"} for k in kwargs if k not in params
        ]
    errors += [
        {"pointer": f"#/kwargs/{k}", "detail": f"{k}: got multiple values"}
        for k in kwargs
        if k in {p.name for p in positional[: len(args)]}
    ]
    errors += [
        {"pointer": f"#/kwargs/{p.name}", "detail": f"missing required argument {p.name!r}"}
        for p in params.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in given
    ]
    return errors or [{"pointer": "#/args", "detail": "arguments do not match the signature"}]
