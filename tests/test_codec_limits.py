"""Limits on stored values and the I/O-free guards around them (issue 7, section 1).

Encoding rejects at the call, naming the path, what jsonb or a later decode would choke on (NUL,
depth, huge integers, size); decoding turns any bad stored text into SerializationError naming
the value; error records are always storable; replayed errors never import a module named by
stored data; durations and retry policies reject NaN, infinity and absurd values. Most tests
need no database; the round trips through jsonb use the rolled-back ``conn``.
"""

from __future__ import annotations

import collections
import enum
import importlib.util
import json
import math
import sys
import types
import uuid
from datetime import timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgdurable
from pgdurable import _codec
from pgdurable._codec import DEFAULT_LIMITS, Limits
from pgdurable._durations import MAX_SECONDS, seconds
from pgdurable._errors import SerializationError, StepFailed
from pgdurable._remote_errors import register_error, replay_error, unregister_error
from pgdurable._retry import Retry


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value with ``depth`` lists around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def stored_text(conn: psycopg.Connection[Any], param: Jsonb) -> str:
    """The value as PostgreSQL stores and prints it."""
    row = conn.execute("select %s::jsonb::text", [param]).fetchone()
    assert row is not None
    return str(row[0])


# --- Limits ---------------------------------------------------------------------------------


def test_default_limits() -> None:
    assert (DEFAULT_LIMITS.max_depth, DEFAULT_LIMITS.max_int_digits) == (100, 1000)
    assert DEFAULT_LIMITS.max_bytes == 32 * 1024 * 1024 == 33554432
    assert Limits() == DEFAULT_LIMITS
    assert Limits(max_depth=50) != DEFAULT_LIMITS


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_depth", 0),
        ("max_depth", -1),
        ("max_depth", 1),
        ("max_depth", 10_000),
        ("max_depth", 10.0),
        ("max_depth", True),
        ("max_int_digits", 4301),
        ("max_int_digits", 100),
        ("max_int_digits", 0),
        ("max_bytes", 0),
        ("max_bytes", 100),
        ("max_bytes", 2**40),
        ("max_bytes", float("nan")),
    ],
)
def test_limits_reject_out_of_range(field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=rf"Limits\.{field} must be an integer from \d+ to \d+"):
        Limits(**{field: bad})


def test_limits_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_LIMITS.max_depth = 5  # type: ignore[misc]


# --- encoding -------------------------------------------------------------------------------


def test_small_values_encode_compactly() -> None:
    assert _codec.dumps(["o-1", 999]) == '["o-1",999]'
    assert _codec.dumps({"é": [1.5, None, True]}) == '{"é":[1.5,null,true]}'
    assert _codec.dumps("plain") == '"plain"'
    j = _codec.encode_input(("o-1", 999), {"rush": True})
    assert j.obj == {"args": ["o-1", 999], "kwargs": {"rush": True}}


def test_nul_in_a_nested_argument_names_its_path() -> None:
    with pytest.raises(SerializationError) as err:
        _codec.encode_input(("o-1", {"items": ["a", "b", "c", "bad\x00byte"]}), {})
    msg = str(err.value)
    assert msg.startswith("args[1]['items'][3] contains a NUL character")
    assert "index 3" in msg and "PostgreSQL" in msg


def test_nul_in_a_key_or_kwarg_is_rejected() -> None:
    with pytest.raises(SerializationError, match=r"the key 'a\\x00' of kwargs\['opts'\]"):
        _codec.encode_input((), {"opts": {"a\x00": 1}})
    with pytest.raises(SerializationError, match=r"result\[0\] contains a NUL"):
        _codec.checked(["\x00"], "result")


def test_ten_thousand_levels_give_serialization_error_not_recursion_error() -> None:
    deep = nested(10_000)
    for call in (
        lambda: _codec.dumps(deep),
        lambda: _codec.checked(deep, "result"),
        lambda: _codec.encode_input((deep,), {}),
    ):
        with pytest.raises(SerializationError, match="nested deeper than 100 levels") as err:
            call()
        assert "Limits(max_depth=" in str(err.value)
        assert len(str(err.value)) < 600  # the path is elided, not 10,000 "[0]"


def test_depth_limit_is_exact_and_counts_the_input_wrapper() -> None:
    assert _codec.dumps(nested(100)) == "[" * 100 + "1" + "]" * 100
    with pytest.raises(SerializationError, match=r"value\[0\]\[0\].*nested deeper"):
        _codec.dumps(nested(101))
    # {"args": [arg]}: the wrapper takes two levels of the stored value.
    _codec.encode_input((nested(98),), {})
    with pytest.raises(SerializationError, match=r"^args\[0\]"):
        _codec.encode_input((nested(99),), {})
    small = Limits(max_depth=3)
    _codec.dumps({"a": [[1]]}, limits=small)
    with pytest.raises(SerializationError, match=r"value\['a'\]\[0\]\[0\] is nested deeper than 3"):
        _codec.dumps({"a": [[[1]]]}, limits=small)


def test_a_circular_value_is_named_as_such() -> None:
    loop: list[Any] = [1]
    loop.append({"back": loop})
    with pytest.raises(SerializationError, match=r"value\[1\]\['back'\] contains itself"):
        _codec.dumps(loop)


def test_integer_digits_are_limited() -> None:
    assert _codec.dumps([10**999 * 9]) == "[9" + "0" * 999 + "]"  # 1000 digits
    assert _codec.dumps(-(10**1000) + 1) == "-" + "9" * 1000
    with pytest.raises(SerializationError, match=r"value\['n'\] is an integer of more than 1000"):
        _codec.dumps({"n": 10**1000})
    with pytest.raises(SerializationError, match="pass it as a string"):
        _codec.encode_input((), {"n": -(10**5000)})
    tight = Limits(max_int_digits=309)
    _codec.dumps(10**308, limits=tight)
    with pytest.raises(SerializationError, match="more than 309 digits"):
        _codec.dumps(10**309, limits=tight)


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"x": [1.0, math.nan]}, r"value\['x'\]\[1\] is nan", "non-finite"),
        ({"x": math.inf}, r"value\['x'\] is inf", "non-finite"),
        ([{1: "a"}], r"value\[0\] has a key 1 of type int", "must be strings"),
        ({"s": {1, 2}}, r"value\['s'\] is a builtins.set", "JSON-serializable"),
        ([b"raw"], r"value\[0\] is a builtins.bytes", "JSON-serializable"),
        (["ok", "\ud800"], r"value\[1\] contains a lone surrogate", "errors='replace'"),
    ],
)
def test_values_json_cannot_store_name_their_path(value: Any, path: str, words: str) -> None:
    with pytest.raises(SerializationError, match=path) as err:
        _codec.dumps(value)
    assert words in str(err.value)


def test_size_limit_counts_utf8_bytes_and_says_how_to_raise_it() -> None:
    limits = Limits(max_bytes=4096)
    _codec.dumps("x" * 4094, limits=limits)  # plus two quotes: exactly 4096 bytes
    with pytest.raises(SerializationError) as err:
        _codec.dumps("x" * 4095, limits=limits)
    msg = str(err.value)
    assert "value is 4097 bytes as JSON, over the limit of 4096 bytes" in msg
    assert "App(limits=pgdurable.Limits(max_bytes=...))" in msg
    assert "pgdurable.settings" in msg
    # 2,000 characters, 4,002 bytes: fits; one more two-byte character does not.
    _codec.dumps("é" * 2047, limits=limits)
    with pytest.raises(SerializationError, match="4098 bytes"):
        _codec.dumps("é" * 2048, limits=limits)
    with pytest.raises(SerializationError, match=r"the arguments \(args and kwargs\) is \d+ bytes"):
        _codec.encode_input(("x" * 5000,), {}, limits=limits)


def test_default_size_limit_is_32_mib() -> None:
    _codec.dumps("x" * (32 * 1024 * 1024 - 2))
    with pytest.raises(SerializationError, match="33554433 bytes"):
        _codec.dumps("x" * (32 * 1024 * 1024 - 1))


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(NamedTuple):
    x: int
    y: int


def test_subclasses_of_json_types_are_accepted_as_json_encodes_them() -> None:
    value = [Colour.RED, Level.HIGH, collections.OrderedDict(a=Point(1, 2)), {Colour.RED: 1}]
    assert _codec.dumps(value) == '["red",3,{"a":[1,2]},{"red":1}]'
    with pytest.raises(SerializationError, match=r"value\['a'\]\[1\] is nan"):
        _codec.dumps(collections.OrderedDict(a=(1, math.nan)))


VALUES = [
    None,
    0,
    -(10**999),
    1.5,
    -0.25,
    "emoji 😀 and \u2028 and control \x01",
    {"a": [1, {"b": None}], "": [], "k": {}},
    nested(99),
    [True, False, 1e-7, 123456789012345678901234567890],
]


@pytest.mark.parametrize("value", VALUES)
def test_everything_dumps_accepts_jsonb_stores_and_loads_reads_back(
    conn: psycopg.Connection[Any], value: Any
) -> None:
    text = stored_text(conn, _codec.checked(value, "value"))
    assert _codec.loads(text, "stored value") == value
    assert _codec.loads(text.encode(), "stored value") == value


def test_what_dumps_refuses_jsonb_refuses_too(conn: psycopg.Connection[Any]) -> None:
    """The NUL check is needed: PostgreSQL rejects such a value only when it is written."""
    with pytest.raises(SerializationError):
        _codec.checked(["a\x00b"], "value")
    with pytest.raises(psycopg.errors.UntranslatableCharacter), conn.transaction():
        conn.execute("select %s::jsonb", [Jsonb(["a\x00b"])])


def test_a_value_at_the_size_limit_reads_back_despite_postgresql_spacing(
    conn: psycopg.Connection[Any],
) -> None:
    # PostgreSQL prints "[0, 0, ...]" and '{"a": 0}': 1.5x the compact text at worst.
    limits = Limits(max_bytes=4096)
    value = [0] * 2047
    text = stored_text(conn, _codec.checked(value, "value", limits))
    assert len(text) > limits.max_bytes
    assert _codec.loads(text, "stored value", limits) == value


def test_floats_postgresql_prints_in_plain_notation_read_back(
    conn: psycopg.Connection[Any],
) -> None:
    value = [1.7976931348623157e308, 5e-324, -1e300]
    tight = Limits(max_int_digits=309)
    text = stored_text(conn, _codec.checked(value, "value", tight))
    assert len(text) > 600  # 309 digits, 324 decimals: no exponent notation in jsonb
    # Read back, as numbers of the same value (jsonb keeps no int/float distinction).
    assert [float(x) for x in _codec.loads(text, "stored value", tight)] == value


# --- decoding -------------------------------------------------------------------------------

ISSUE_INPUT = '{"args": [' + "[" * 10_000 + "]" * 10_000 + "]}"


def test_the_issue_input_gives_serialization_error_naming_the_run(
    conn: psycopg.Connection[Any],
) -> None:
    # PostgreSQL accepts it, so a worker must survive reading it.
    row = conn.execute("select %s::jsonb::text", [ISSUE_INPUT]).fetchone()
    assert row is not None
    what = "input of run 1234 (workflow p.echo)"
    with pytest.raises(SerializationError, match=r"^input of run 1234 \(workflow p\.echo\)"):
        _codec.loads(row[0], what)


def test_depth_between_the_limit_and_python_recursion_is_refused() -> None:
    assert _codec.loads("[" * 100 + "]" * 100, "v") == nested(99, [])
    with pytest.raises(SerializationError, match=r"checkpoint 7 .* nested deeper than 100"):
        _codec.loads("[" * 101 + "]" * 101, "checkpoint 7 of run x")
    with pytest.raises(SerializationError, match="nested deeper than 3"):
        _codec.loads('{"a": [[{"b": 1}]]}', "v", Limits(max_depth=3))
    assert _codec.loads('{"a": [[1]]}', "v", Limits(max_depth=3)) == {"a": [[1]]}
    # Brackets inside strings are not nesting.
    text = json.dumps({"s": "[" * 5000})
    assert _codec.loads(text, "v") == {"s": "[" * 5000}


def test_huge_integers_are_refused_before_conversion() -> None:
    # int("9" * 5000) itself raises ValueError (Python's 4300-digit limit): never that.
    with pytest.raises(SerializationError, match="integer of 5000 digits, over the limit of 1000"):
        _codec.loads("[" + "9" * 5000 + "]", "payload of event e")
    with pytest.raises(SerializationError, match="integer of 1001 digits"):
        _codec.loads('{"n": -' + "9" * 1001 + "}", "v")
    assert _codec.loads("[-" + "9" * 1000 + "]", "v") == [-(10**1000 - 1)]
    assert _codec.loads('["' + "9" * 5000 + '"]', "v") == ["9" * 5000]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("[1", "is not valid JSON"),
        ("", "is not valid JSON"),
        ("[NaN]", "NaN is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
        (b"[\xff]", "not valid UTF-8"),
        ("[1] [2]", "is not valid JSON"),
    ],
)
def test_malformed_text_raises_only_serialization_error(data: str | bytes, words: str) -> None:
    with pytest.raises(SerializationError, match=r"^output of step s (is|cannot be decoded)") as e:
        _codec.loads(data, "output of step s")
    assert words in str(e.value)


def test_oversized_text_is_refused_without_parsing() -> None:
    limits = Limits(max_bytes=1024)
    junk = "x" * 2049  # not JSON at all: the size is checked first
    with pytest.raises(SerializationError, match=r"^v is 2049 bytes of JSON, over the 2048 bytes"):
        _codec.loads(junk, "v", limits)
    with pytest.raises(SerializationError, match="Limits"):
        _codec.loads(junk.encode(), "v", limits)


def test_loads_accepts_none_bytes_and_the_jsonb_binary_version_byte() -> None:
    assert _codec.loads(None, "v") is None
    assert _codec.loads(b'{"a": 1}', "v") == {"a": 1}
    assert _codec.loads(b'\x01{"a": 1}', "v") == {"a": 1}
    assert _codec.loads(memoryview(b"[1]"), "v") == [1]  # type: ignore[arg-type]


# --- error records --------------------------------------------------------------------------


class PaymentDeclined(Exception):
    pass


class Outer:
    class Inner(Exception):
        pass


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_type_names() -> None:
    assert _codec.error_json(ValueError("x"))["type"] == "ValueError"
    assert _codec.error_json(pgdurable.SerializationError("x"))["type"] == (
        "pgdurable.SerializationError"
    )
    assert _codec.error_json(PaymentDeclined())["type"] == f"{__name__}.PaymentDeclined"
    assert _codec.error_json(Outer.Inner())["type"] == f"{__name__}.Outer.Inner"


def test_error_record_has_type_message_traceback() -> None:
    rec = _codec.error_json(raised(PaymentDeclined("card 42 declined")))
    assert rec["message"] == "card 42 declined"
    assert rec["traceback"].startswith("Traceback (most recent call last):")
    assert rec["traceback"].endswith("PaymentDeclined: card 42 declined\n")
    assert "sqlstate" not in rec


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class BadStrAndRepr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")

    def __repr__(self) -> str:
        raise SystemExit(3)  # even this must not escape


class BadNotes:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


def test_exceptions_that_cannot_print_themselves_still_give_a_record() -> None:
    rec = _codec.error_json(raised(BadStr("a")))
    assert rec["message"] == f"<str() of {__name__}.BadStr raised RuntimeError; repr: BadStr('a')>"
    assert "Traceback" in rec["traceback"]
    rec = _codec.error_json(raised(BadStrAndRepr()))
    assert rec["message"] == (
        f"<str() of {__name__}.BadStrAndRepr raised RuntimeError, repr() raised SystemExit>"
    )
    exc = raised(ValueError("with notes"))
    exc.__notes__ = BadNotes()  # type: ignore[attr-defined]
    rec = _codec.error_json(exc)
    assert rec["message"] == "with notes"
    _codec.dumps(rec)


def test_a_traceback_whose_frames_cannot_be_formatted_still_gives_a_record() -> None:
    # linecache asks a module's loader for source lines; a failing loader breaks formatting.
    class BrokenLoader:
        def get_source(self, name: str) -> str:
            raise RuntimeError("loader is broken")

    scope: dict[str, Any] = {"__name__": "fake_module", "__loader__": BrokenLoader()}
    code = "def fail():\n    raise ValueError('inside')\n"
    exec(compile(code, f"/nonexistent/{uuid.uuid4().hex}.py", "exec"), scope)
    with pytest.raises(ValueError) as info:
        scope["fail"]()
    rec = _codec.error_json(info.value)
    assert rec["message"] == "inside"
    tb = rec["traceback"]
    assert "formatting failed with RuntimeError" in tb
    assert ", line 2, in fail\n" in tb
    assert tb.endswith("ValueError: inside\n")


def test_nul_and_surrogates_in_exception_text_are_escaped_and_storable(
    conn: psycopg.Connection[Any],
) -> None:
    rec = _codec.error_json(raised(ValueError("bad\x00byte and \ud800")))
    assert rec["message"] == "bad\\x00byte and \\ud800"
    assert "bad\\x00byte" in rec["traceback"] and "\x00" not in rec["traceback"]
    text = stored_text(conn, _codec.checked(rec, "error"))
    assert _codec.loads(text, "error")["message"] == "bad\\x00byte and \\ud800"


def test_long_messages_and_tracebacks_are_truncated_with_a_marker() -> None:
    rec = _codec.error_json(raised(ValueError("m" * 100_000)))
    msg = rec["message"]
    assert len(msg) <= _codec.MAX_ERROR_MESSAGE
    assert msg.startswith("mmm") and msg.endswith("characters]")
    assert f"[truncated {100_000 - msg.index('...')} characters]" in msg
    assert rec["traceback"].endswith("m" * 100_000 + "\n")  # under its own cap: whole

    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("m" * 300_000)
        recurse(n - 1)

    with pytest.raises(ValueError) as info:
        recurse(50)
    tb = _codec.error_json(info.value)["traceback"]
    assert len(tb) <= _codec.MAX_ERROR_TRACEBACK
    assert tb.startswith("Traceback (most recent call last):")
    assert "in recurse" in tb and "characters] ...\n" in tb
    assert tb.endswith("m\n")  # the end, where the exception is, is kept


def test_error_record_fits_a_small_max_bytes() -> None:
    limits = Limits(max_bytes=1024)
    rec = _codec.error_json(raised(ValueError("é\x01" * 50_000)), limits)
    assert len(_codec.dumps(rec, limits=limits).encode()) <= 1024
    assert rec["type"] == "ValueError" and rec["message"].startswith("é\x01")


def test_psycopg_errors_record_their_sqlstate(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DivisionByZero) as info, conn.transaction():
        conn.execute("select 1 / 0")
    rec = _codec.error_json(info.value)
    assert rec["sqlstate"] == "22012"
    assert rec["type"] == "psycopg.errors.DivisionByZero"
    assert "division by zero" in rec["message"]


# --- replaying recorded errors --------------------------------------------------------------


def test_known_types_are_rebuilt() -> None:
    exc = replay_error({"type": "ValueError", "message": "bad"})
    assert type(exc) is ValueError and str(exc) == "bad"
    exc = replay_error({"type": "pgdurable.NonRetryableError", "message": "stop"})
    assert type(exc) is pgdurable.NonRetryableError
    for original in (PaymentDeclined("no funds"), Outer.Inner("nested")):
        exc = replay_error(_codec.error_json(original))
        assert type(exc) is type(original) and str(exc) == str(original)


def test_a_forged_type_never_imports_the_module_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"pgd_forged_{uuid.uuid4().hex[:8]}"
    side_effect = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(side_effect)!r}, 'w').write('imported')\nclass Boom(Exception):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.util.find_spec(name) is not None  # importable: an import would succeed

    exc = replay_error({"type": f"{name}.Boom", "message": "forged"})

    assert isinstance(exc, StepFailed)
    assert (exc.error_type, exc.message) == (f"{name}.Boom", "forged")
    assert name not in sys.modules
    assert not side_effect.exists()


def test_module_getattr_hooks_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    module = types.ModuleType("pgd_lazy_module")

    def hook(attr: str) -> Any:
        calls.append(attr)
        return ValueError

    module.__getattr__ = hook  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "pgd_lazy_module", module)
    exc = replay_error({"type": "pgd_lazy_module.Anything", "message": "m"})
    assert isinstance(exc, StepFailed) and calls == []


@pytest.mark.parametrize(
    "name",
    [
        "SystemExit",
        "KeyboardInterrupt",
        "GeneratorExit",
        "BaseException",
        "pgdurable._context.Suspended",  # an engine BaseException: must not unwind a workflow
        "print",
        "os.system",
        "sys.exit",
        "UnicodeDecodeError",  # needs five arguments
        "ExceptionGroup",  # needs two
        "",
        "a..b",
        "__import__('os')",
        "x" * 600,
    ],
)
def test_everything_else_becomes_step_failed(name: str) -> None:
    exc = replay_error({"type": name, "message": "m"})
    assert type(exc) is StepFailed
    assert exc.error_type == (name or "Exception") and exc.message == "m"


class ExplodingInit(Exception):
    def __init__(self, message: str) -> None:
        raise SystemExit("constructor exploded")


def test_a_constructor_that_raises_falls_back() -> None:
    exc = replay_error(_codec.error_json(Exception("x")) | {"type": type_of(ExplodingInit)})
    assert type(exc) is StepFailed and exc.error_type == type_of(ExplodingInit)


def type_of(cls: type) -> str:
    return _codec.type_name(cls)


@pytest.mark.parametrize(
    "record", [None, "ValueError", ["ValueError"], {"type": 7, "message": {"a": 1}}, {}]
)
def test_malformed_records_become_step_failed(record: Any) -> None:
    exc = replay_error(record)
    assert type(exc) is StepFailed and exc.error_type == "Exception"


def test_registered_classes_are_rebuilt_even_when_their_module_is_not_loaded() -> None:
    class Declined(Exception):
        pass

    Declined.__module__ = "pgd_not_loaded_pkg.errors"
    Declined.__qualname__ = "Declined"
    stored = {"type": "pgd_not_loaded_pkg.errors.Declined", "message": "m"}
    assert type(replay_error(stored)) is StepFailed
    assert register_error(Declined) is Declined
    register_error(Declined, name="legacy.OldDeclined")
    try:
        assert type(replay_error(stored)) is Declined
        assert type(replay_error({"type": "legacy.OldDeclined", "message": "m"})) is Declined
    finally:
        unregister_error("pgd_not_loaded_pkg.errors.Declined")
        unregister_error("legacy.OldDeclined")
    assert type(replay_error(stored)) is StepFailed
    with pytest.raises(TypeError, match="Exception subclass"):
        register_error(SystemExit)  # type: ignore[type-var]


# --- durations ------------------------------------------------------------------------------


def test_seconds_accepts_numbers_and_timedeltas() -> None:
    assert seconds(5, "sleep") == 5.0
    assert seconds(0.25, "delay") == 0.25
    assert seconds(timedelta(days=3), "sleep") == 3 * 86400.0
    assert seconds(Fraction(1, 4), "delay") == 0.25
    assert seconds(None, "timeout") is None
    assert seconds(0, "delay") == 0.0
    assert seconds(MAX_SECONDS, "sleep") == MAX_SECONDS


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (math.nan, "sleep is NaN"),
        (math.inf, "sleep is inf, out of range"),
        (-math.inf, "sleep is -inf, out of range"),
        (-1, "sleep is -1, out of range: it must be at least 0 and at most 3.15576e\\+09"),
        (MAX_SECONDS * 1.01, "out of range"),
        (timedelta.max, "out of range"),
        (timedelta(seconds=-1), "out of range"),
        (10**400, "out of range"),
    ],
)
def test_seconds_rejects_nan_infinity_and_absurd_values(value: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words) as err:
        seconds(value, "sleep")
    assert "100 years" in str(err.value)


@pytest.mark.parametrize("value", [True, "30", "30s", b"1", [1]])
def test_seconds_rejects_other_types(value: Any) -> None:
    with pytest.raises(TypeError, match="poll_interval must be a number of seconds"):
        seconds(value, "poll_interval")


def test_seconds_options() -> None:
    with pytest.raises(TypeError, match="lease is required"):
        seconds(None, "lease", allow_none=False)
    with pytest.raises(ValueError, match="greater than 0"):
        seconds(0, "lease", exclusive_minimum=True)
    assert seconds(0.001, "lease", exclusive_minimum=True) == 0.001
    with pytest.raises(ValueError, match="at least 1 and at most 60 seconds"):
        seconds(61, "x", minimum=1, maximum=60)


# --- retry policies -------------------------------------------------------------------------


def test_retry_defaults_and_behaviour_are_unchanged() -> None:
    r = Retry()
    assert (r.max_attempts, r.initial_delay, r.backoff, r.max_delay) == (3, 1.0, 2.0, None)
    assert (r.jitter, r.inline_limit, r.cap) == (True, 5.0, 60.0)
    fixed = Retry(max_attempts=5, initial_delay=1, backoff=2, max_delay=5, jitter=False)
    assert [fixed.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert fixed.exhausted(5) and not fixed.exhausted(4)


@pytest.mark.parametrize("field", ["initial_delay", "max_delay", "inline_limit", "backoff"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_retry_rejects_nan_and_infinity_everywhere(field: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"Retry\.{field}"):
        Retry(**{field: bad})


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_attempts": 0}, ValueError, "from 1 to 10000"),
        ({"max_attempts": 10_001}, ValueError, "from 1 to 10000"),
        ({"max_attempts": 2.5}, TypeError, "must be an int"),
        ({"max_attempts": True}, TypeError, "must be an int"),
        ({"initial_delay": -1}, ValueError, "Retry.initial_delay is -1"),
        ({"initial_delay": 1e12}, ValueError, "100 years"),
        ({"initial_delay": "1"}, TypeError, "Retry.initial_delay"),
        ({"backoff": 0.5}, ValueError, "finite number >= 1"),
        ({"backoff": None}, TypeError, "Retry.backoff"),
        ({"inline_limit": -0.1}, ValueError, "Retry.inline_limit"),
        ({"jitter": "yes"}, TypeError, "Retry.jitter"),
        ({"initial_delay": 10, "max_delay": 5}, ValueError, "below initial_delay"),
    ],
)
def test_retry_rejects_insane_values(kwargs: dict[str, Any], error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace(".", r"\.")):
        Retry(**kwargs)


def test_retry_delay_never_overflows_and_accepts_timedeltas() -> None:
    r = Retry(max_attempts=10_000, initial_delay=1, backoff=2, max_delay=30, jitter=False)
    assert r.delay(9_999) == 30
    assert Retry(max_attempts=10_000, backoff=1000.0, jitter=False).delay(5_000) == 60
    assert Retry(initial_delay=0, backoff=1e300).delay(2_000) == 0
    t = Retry(initial_delay=timedelta(milliseconds=500), max_delay=timedelta(minutes=1))  # type: ignore[arg-type]
    assert (t.initial_delay, t.max_delay) == (0.5, 60.0)
