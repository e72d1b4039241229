"""Task registration and argument validation at enqueue time."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import re
import time
from typing import Literal

import pydantic
import pytest

from conveyor import Context, Conveyor
from conveyor.core.checks import order_by_dependencies
from conveyor.core.errors import InvalidArguments, RegistrationError, UnknownTask, ValidationError
from conveyor.core.ids import is_uuid, uuid7
from conveyor.core.job import Status


class Size(pydantic.BaseModel):
    width: int
    height: int


@pytest.fixture
def app(tmp_path):
    app = Conveyor(f"sqlite:///{tmp_path}/t.db")

    @app.task(queue="media", max_retries=5, timeout=60)
    def transcode(ctx: Context, path: str, height: int, preset: Literal["fast", "slow"] = "fast") -> str:
        return path

    @app.task
    def resize(ctx: Context, size: Size, tags: list[str] | None = None) -> None:
        return None

    return app


def test_task_name__defaults_to_function_name_and_duplicates_are_refused(app):
    assert set(app.tasks) == {"transcode", "resize"}

    with pytest.raises(RegistrationError, match="already registered"):
        @app.task(name="transcode")
        def other(ctx: Context) -> None: ...


@pytest.mark.parametrize("name", [5, "", "x" * 201, "a\x00b", "a\ud800", None])
def test_registration__a_name_no_job_could_be_submitted_under__is_refused(app, name):
    """``@app.task(name=5)`` was registered, and every attempt of its jobs failed with
    UnknownTask; ``name=""`` silently took the function's name instead."""
    def fn(ctx: Context) -> None: ...

    if name is None:  # a callable without __name__ and no name= either
        fn = functools.partial(fn)  # type: ignore[assignment]
    with pytest.raises(RegistrationError, match=r"invalid task name .*: a task name is a str of 1–200 characters"
                       if name is not None else "has no __name__: give the task a name="):
        app.task(name=name)(fn)
    assert set(app.tasks) == {"transcode", "resize"}


def test_registration__a_name_of_200_characters__is_registered_and_enqueued(app):
    app.task(name="é" * 200)(lambda ctx: None)
    assert app.build_job("é" * 200, [], {}, now=0.0).task == "é" * 200


def test_registration__something_not_callable__is_refused(app):
    with pytest.raises(RegistrationError, match="a task is a function, not 5"):
        app.task(5)


@pytest.mark.parametrize("reserved", ["queue", "priority", "delay", "key", "depends_on", "webhook"])
def test_registration__reserved_parameter_names_are_refused(app, reserved):
    ns: dict = {"Context": Context}
    exec(f"def bad(ctx: Context, {reserved}: int) -> None: ...", ns)
    with pytest.raises(RegistrationError, match="reserved"):
        app.task(ns["bad"])


def test_registration__a_task_without_ctx_is_refused_not_failed_at_every_attempt(app):
    """``def double(n: int)``: ``double.enqueue()`` was accepted, and each attempt failed on the
    Context given as ``n``."""
    with pytest.raises(RegistrationError, match=r"'double': the first parameter must be the Context \(ctx\), "
                                                r"not 'n' annotated int"):
        @app.task
        def double(n: int) -> int:
            return n * 2

    @app.task  # unannotated, Any, object, Context or a union with it: all may take the Context
    def loose(ctx, n: int) -> None: ...  # type: ignore[no-untyped-def]

    @app.task
    def optional(ctx: Context | None, n: int) -> None: ...

    assert {"loose", "optional"} <= set(app.tasks)


@pytest.mark.parametrize("options", [
    {"priority": True}, {"priority": 10}, {"max_retries": 5000}, {"max_retries": 1.0}, {"timeout": float("inf")},
    {"timeout": 30 * 86400}, {"timeout": "5"}, {"timeout": 0}, {"backoff": -1}, {"backoff": 10, "backoff_cap": 5},
])
def test_registration__options_enqueue_would_refuse_are_refused_here(app, options):
    with pytest.raises(RegistrationError, match=next(iter(options))):
        @app.task(**options)
        def t(ctx: Context) -> None: ...
    assert "t" not in app.tasks


@pytest.mark.parametrize(("limits", "message"), [
    ({"concurrency_limit": 2**31}, r"concurrency_limit must be an integer from 1 to 1000000, not 2147483648"),
    ({"concurrency_limit": 1_000_001}, r"concurrency_limit must be an integer from 1 to 1000000, not 1000001"),
    ({"rate_limit": f"{2**63}/s"}, r"from 1 to 1000000 per second, minute or hour\), not '9223372036854775808/s'"),
    ({"rate_limit": "1000001/h"}, r"rate_limit must look like .*, not '1000001/h'"),
    ({"rate_limit": "9" * 5000 + "/m"}, r"rate_limit must look like .*, not '9999999"),
])
def test_registration__limits_beyond_what_engines_store__refused(app, limits, message):
    """``concurrency_limit=2**31`` made every enqueue fail with a psycopg error on PostgreSQL,
    ``2**63`` with an OverflowError on SQLite; 5,000 digits raised int()'s ValueError."""
    with pytest.raises(RegistrationError, match=message):
        app.task(name="limited", **limits)(lambda ctx: None)
    assert "limited" not in app.tasks


def test_registration__the_largest_limits__accepted(app):
    task = app.task(name="limited", concurrency_limit=1_000_000, rate_limit="1000000/h")(lambda ctx: None)
    assert task.describe()["concurrency_limit"] == 1_000_000
    assert task.describe()["rate_limit"] == {"count": 1_000_000, "per": 3600.0}


def test_queue_declaration__a_fractional_delivery_limit_is_refused(app):
    with pytest.raises(ValidationError, match="whole number"):
        app.queue("q", max_deliveries=1.5)


def test_registration__a_task_needs_the_context_parameter(app):
    with pytest.raises(RegistrationError, match="Context"):
        app.task(lambda: None, name="noctx")


@pytest.mark.parametrize(("args", "kwargs", "pointer"), [
    ((), {"path": "a"}, "#/kwargs/height"),  # missing
    ((), {}, "#/kwargs/path"),  # nothing given
    (("a", "480"), {}, "#/args/1"),  # a string for an int
    (("a",), {"height": 4.5}, "#/kwargs/height"),  # a float for an int
    (("a",), {"height": True}, "#/kwargs/height"),  # a bool is not an int
    (("a", 480), {"colour": "red"}, "#/kwargs/colour"),  # unexpected
    (("a", 480, "fast", "extra"), {}, "#/args/3"),  # too many
    (("a", 480), {"preset": "medium"}, "#/kwargs/preset"),  # not one of the literals
    ((dt.date(2026, 1, 1), 480), {}, "#/args/0"),  # not JSON
])
def test_validate__bad_arguments__name_the_argument(app, args, kwargs, pointer):
    with pytest.raises(InvalidArguments) as err:
        app.tasks["transcode"].validate(args, kwargs)
    assert pointer in [e["pointer"] for e in err.value.errors]


def test_validate__no_arguments__fine_when_every_parameter_has_a_default(app):
    @app.task
    def ping(ctx: Context, times: int = 1, *more: int, **extra: str) -> None:
        return None

    ping.validate((), {})
    with pytest.raises(InvalidArguments):
        ping.validate(("once",), {})


def test_validate__models_are_checked_field_by_field(app):
    resize = app.tasks["resize"]
    resize.validate((), {"size": {"width": 3, "height": 4}})
    with pytest.raises(InvalidArguments) as err:
        resize.validate((), {"size": {"width": "wide", "height": 4}})
    assert err.value.errors[0]["pointer"] == "#/kwargs/size/width"
    args, kwargs = resize.prepare([], {"size": {"width": 3, "height": 4}})
    assert args == [Size(width=3, height=4)] and kwargs == {}  # the task receives the typed value


def test_json_schema__describes_parameters(app):
    schema = app.tasks["transcode"].json_schema()
    assert schema["required"] == ["path", "height"]
    assert schema["properties"]["height"]["type"] == "integer"
    assert schema["properties"]["preset"]["enum"] == ["fast", "slow"]


def test_build_job__applies_task_defaults_and_options(app):
    job = app.build_job("transcode", ["a.mp4", 480], {}, now=1000.0)
    assert (job.queue, job.max_retries, job.timeout, job.status) == ("media", 5, 60.0, Status.QUEUED)
    assert is_uuid(job.id)
    later = app.build_job("transcode", ["a.mp4", 480], {}, now=1000.0, delay=30, priority=9, queue="fast")
    assert (later.status, later.scheduled_at, later.priority, later.queue) == (Status.SCHEDULED, 1030.0, 9, "fast")


@pytest.mark.parametrize(("options", "pointer"), [
    ({"priority": 42}, "#/priority"),
    ({"priority": -1}, "#/priority"),
    ({"delay": -5}, "#/delay"),
    ({"delay": 5, "eta": "2030-01-01T00:00:00Z"}, "#/eta"),
    ({"eta": "tomorrow"}, "#/eta"),
    ({"eta": float("inf")}, "#/eta"),
    ({"eta": float("nan")}, "#/eta"),
    ({"eta": 14 * 86400 + 1.0}, "#/eta"),  # now=0: one second past the 14 days a delay may reach
    ({"eta": "9999-12-31T23:59:59Z"}, "#/eta"),
    ({"eta": "1970-01-01T00:10:00"}, "#/eta"),  # no UTC offset: RFC 3339 requires one
    ({"max_retries": -1}, "#/max_retries"),
    ({"timeout": 0}, "#/timeout"),
    ({"queue": "no spaces"}, "#/queue"),
    ({"key": ""}, "#/key"),
    ({"metadata": ["not", "an", "object"]}, "#/metadata"),
    ({"webhook": "ftp://example.com/x"}, "#/webhook"),
    ({"depends_on": ["not-a-uuid"]}, "#/depends_on/0"),
])
def test_build_job__bad_options__name_the_option(app, options, pointer):
    with pytest.raises(ValidationError) as err:
        app.build_job("transcode", ["a", 1], {}, now=0.0, **options)
    assert err.value.errors[0]["pointer"] == pointer


def test_build_job__naive_datetime_eta__is_local_time(app, monkeypatch):
    monkeypatch.setenv("TZ", "America/Los_Angeles")  # 8 hours behind UTC in winter
    time.tzset()
    try:
        now = time.time()
        in_an_hour = dt.datetime.now() + dt.timedelta(hours=1)  # naive, local: as users write it
        job = app.build_job("transcode", ["a", 1], {}, now=now, eta=in_an_hour)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert job.scheduled_at is not None and abs(job.scheduled_at - (now + 3600)) < 5


def test_enqueue_many__an_invalid_item__is_named_and_nothing_is_sent(app):
    transcode = app.tasks["transcode"]
    with pytest.raises(InvalidArguments) as err:
        transcode.enqueue_many([{"path": "a", "height": 1}, {"path": "b", "height": 2}, {"path": "c", "height": "x"}])
    assert str(err.value).startswith("item 2: ") and err.value.errors[0]["pointer"] == "#/2/kwargs/height"
    with pytest.raises(ValidationError, match="unknown option 'bogus'"):
        transcode.enqueue_many([{"path": "a", "height": 1}], bogus=1)


def test_arguments__an_object_key_that_is_not_text__refused_naming_the_argument(app):
    @app.task
    def untyped(ctx: Context, data, *, labels: dict[str, int] | None = None) -> None: ...  # type: ignore[no-untyped-def]

    for args, kwargs, pointer in (([{1: "a"}], {}, "#/args/0"), (["x"], {"labels": {2: 3}}, "#/kwargs/labels"),
                                  ([[{"ok": {3: 0}}]], {}, "#/args/0")):
        with pytest.raises(InvalidArguments) as err:
            app.build_job("untyped", args, kwargs, now=0.0)
        assert err.value.errors[0]["pointer"] == pointer and "not text" in err.value.errors[0]["detail"]
    with pytest.raises(ValidationError) as err:
        app.build_job("untyped", ["x"], {}, now=0.0, metadata={1: 2})
    assert err.value.errors[0]["pointer"] == "#/metadata"
    app.build_job("untyped", [{"1": "a", "n": [1, {"k": None}]}], {}, now=0.0)  # text keys: fine


def test_arguments_and_metadata__nan_or_a_set_inside__named_where_and_what(app):
    """A NaN deep in an argument was "dict is not JSON", and in metadata "metadata must be a JSON
    object of at most 64 KiB" (a size problem, it read)."""
    @app.task
    def untyped(ctx: Context, data, *, labels=None) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(InvalidArguments) as err:
        app.build_job("untyped", [{"rows": [1.5, float("nan")]}], {"labels": {"a/b": {1, 2}}}, now=0.0)
    assert [(e["pointer"], e["detail"]) for e in err.value.errors] == [
        ("#/args/0/rows/1", "data/rows/1: nan is not a JSON number (Conveyor accepts only JSON arguments)"),
        ("#/kwargs/labels/a~1b", "labels/a~1b: set is not JSON (Conveyor accepts only JSON arguments)")]

    with pytest.raises(ValidationError) as meta:
        app.build_job("untyped", ["x"], {}, now=0.0, metadata={"score": float("inf")})
    assert meta.value.errors[0] == {"pointer": "#/metadata/score", "detail": "inf is not a JSON number"}
    assert str(meta.value) == "metadata/score: inf is not a JSON number"


@pytest.mark.parametrize("how", ["enqueue", "enqueue_async", "enqueue_many", "enqueue_many_async"])
@pytest.mark.parametrize("task", [5, None, print])
def test_enqueue__something_not_a_task_nor_a_name__a_validation_error_naming_it(app, how, task):
    """``app.enqueue(5)`` raised AttributeError: 'int' object has no attribute 'validate'."""
    call = {
        "enqueue": lambda: app.enqueue(task),
        "enqueue_async": lambda: asyncio.run(app.enqueue_async(task)),
        "enqueue_many": lambda: app.enqueue_many([("transcode", ["a", 1], {}, {}), (task, (), {}, {})]),
        "enqueue_many_async": lambda: asyncio.run(app.enqueue_many_async([(task, (), {}, {})])),
    }[how]
    with pytest.raises(ValidationError, match=r"task must be a registered task \(what @app.task returned\) or a task "
                                              rf"name \(str\), not {re.escape(repr(task))}") as err:
        call()
    assert err.value.errors[0]["pointer"] in ("#/task", "#/1/task")


def test_enqueue__an_unknown_option__a_validation_error_naming_it(app):
    """``app.enqueue("transcode", bogus=1)`` raised TypeError: build_job() got an unexpected keyword argument."""
    with pytest.raises(ValidationError, match="unknown option 'bogus'; the options are delay, ") as err:
        app.enqueue("transcode", ["a", 1], bogus=1)
    assert err.value.errors == [{"pointer": "#/bogus", "detail": "not an option"}]


@pytest.mark.parametrize("submissions", [5, [5], [("transcode", ["a", 1], {})], [("transcode", ["a", 1], {}, 5)]])
def test_enqueue_many__not_a_list_of_submissions__a_validation_error_saying_what_it_takes(app, submissions):
    with pytest.raises(ValidationError, match=r"enqueue_many takes a list of \(task, args, kwargs, options\) tuples"):
        app.enqueue_many(submissions)


def test_unknown_task__is_a_validation_error(app):
    with pytest.raises(UnknownTask) as err:
        app.build_job("nope", [], {}, now=0.0)
    assert err.value.errors[0]["pointer"] == "#/task"


def test_dependencies__parents_first_and_cycles_refused(app):
    a = app.build_job("transcode", ["a", 1], {}, now=0.0)
    b = app.build_job("transcode", ["b", 1], {}, now=0.0, depends_on=[a.id])
    assert [j.id for j in order_by_dependencies([b, a])] == [a.id, b.id]
    a2 = a.replace(depends_on=[b.id])
    with pytest.raises(ValidationError, match="cycle"):
        order_by_dependencies([a2, b])


def test_uuid7__time_ordered_and_unique():
    ids = [uuid7() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i[14] == "7" and i[19] in "89ab" and is_uuid(i) for i in ids)
