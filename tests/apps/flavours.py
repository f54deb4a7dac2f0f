"""One test, both flavours: the engine tests write their workflows, steps and transactions once,
as plain functions, and run them as written (sync) and as ``async def`` (async).

``asyncify`` derives the async twin of a function from its source: the def becomes ``async
def`` and every call becomes ``await _flavoured_call(f, ...)``, which calls the ``_async`` twin
of a pgdurable call (``pgdurable.sleep`` -> ``sleep_async``, ``handle.result`` ->
``result_async``, ``wf.start`` -> ``start_async``), ``asyncio.sleep`` for ``time.sleep``, and
awaits whatever returns an awaitable (steps, child workflows, an AsyncConnection's execute).
The twin keeps the original's closure cells, so it sees the test's variables as they change.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import textwrap
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pgdurable

FLAVOURS = ("sync", "async")


# Waiting on these would block the event loop: an async step awaits them in a thread instead.
_BLOCKING = (threading.Event, threading.Barrier, threading.Semaphore, threading.Condition)


async def _flavoured_call(f: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(getattr(f, "__self__", None), _BLOCKING) or _test_wait(f):
        return await asyncio.to_thread(f, *args, **kwargs)
    result = _async_twin(f)(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def _test_wait(f: Any) -> bool:
    """The test helpers that block until something happens (wait_for_file, wait_until)."""
    return (
        inspect.isfunction(f) and f.__module__.endswith("support") and f.__name__.startswith("wait")
    )


def _async_twin(f: Any) -> Any:
    if f is time.sleep:
        return asyncio.sleep
    name = getattr(f, "__name__", "")
    owner = getattr(f, "__self__", None)
    if owner is not None and any(c.__module__.startswith("pgdurable") for c in type(owner).__mro__):
        return getattr(owner, f"{name}_async", f)
    if inspect.isfunction(f) and f.__module__.startswith("pgdurable") and name in pgdurable.__all__:
        return getattr(pgdurable, f"{name}_async", f)
    return f


class _AwaitCalls(ast.NodeTransformer):
    """Every call in the function's own body (not in nested defs or lambdas) awaited."""

    def visit_Call(self, node: ast.Call) -> Any:
        self.generic_visit(node)
        call = ast.Call(
            func=ast.Name("_flavoured_call", ast.Load()),
            args=[node.func, *node.args],
            keywords=node.keywords,
        )
        return ast.Await(call)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        return node

    def visit_Lambda(self, node: ast.Lambda) -> Any:
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        return node


def asyncify(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``async def`` twin of the plain function ``fn`` (see the module's docstring)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    fdef = tree.body[0]
    assert isinstance(fdef, ast.FunctionDef), f"{fn.__qualname__} is not a plain def"
    for node in ast.walk(fdef):
        if isinstance(node, (ast.Nonlocal, ast.Global, ast.Yield, ast.YieldFrom)):
            raise TypeError(f"asyncify cannot carry {type(node).__name__} in {fn.__qualname__}")
    body = [_AwaitCalls().visit(stmt) for stmt in fdef.body]
    for arg in [*fdef.args.posonlyargs, *fdef.args.args, *fdef.args.kwonlyargs]:
        arg.annotation = None
    twin = ast.AsyncFunctionDef(
        name=fdef.name, args=fdef.args, body=body, decorator_list=[], returns=None
    )
    # Compiled inside a factory that binds the original's free variables, so the twin's code
    # has them as free variables too, and gets the original's live cells below.
    freevars = fn.__code__.co_freevars
    factory = ast.FunctionDef(
        name="_factory",
        args=ast.arguments(
            posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[], vararg=None
        ),
        body=[
            *[ast.Assign([ast.Name(v, ast.Store())], ast.Constant(None)) for v in freevars],
            twin,
            ast.Return(ast.Name(fdef.name, ast.Load())),
        ],
        decorator_list=[],
        returns=None,
    )
    module = ast.fix_missing_locations(ast.Module(body=[factory], type_ignores=[]))
    ast.increment_lineno(module, fn.__code__.co_firstlineno - 1)
    code = compile(module, inspect.getsourcefile(fn) or "<asyncify>", "exec")
    factory_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    twin_code = next(c for c in factory_code.co_consts if isinstance(c, types.CodeType))
    cells = dict(zip(freevars, fn.__closure__ or (), strict=True))
    namespace = fn.__globals__
    namespace.setdefault("_flavoured_call", _flavoured_call)
    out = types.FunctionType(
        twin_code,
        namespace,
        fn.__name__,
        fn.__defaults__,
        tuple(cells[v] for v in twin_code.co_freevars),
    )
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__qualname__ = fn.__qualname__
    out.__module__ = fn.__module__
    return out


class FlavouredApp(pgdurable.App):
    """An App whose decorators register the plain function as written (``flavour="sync"``) or
    its async twin (``flavour="async"``). Default: $PGDURABLE_TEST_FLAVOUR (worker processes
    the tests spawn), else sync."""

    def __init__(self, *args: Any, flavour: str | None = None, **kwargs: Any) -> None:
        flavour = flavour or os.environ.get("PGDURABLE_TEST_FLAVOUR") or "sync"
        assert flavour in FLAVOURS, flavour
        super().__init__(*args, **kwargs)
        self.flavour = flavour

    def _twin(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return asyncify(fn) if self.flavour == "async" else fn

    def workflow(self, *args: Any, **kwargs: Any) -> Any:
        register = super().workflow(*args, **kwargs)
        return lambda fn: _direct_calls_run(register(self._twin(fn)))

    def step(self, *args: Any, **kwargs: Any) -> Any:
        register = super().step(*args, **kwargs)
        return lambda fn: register(self._twin(fn))

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        register = super().transaction(*args, **kwargs)
        return lambda fn: register(self._twin(fn))


def _direct_calls_run(wf: Any) -> Any:
    """A direct call of an async workflow from the test's (sync) code runs it to its result,
    as a direct call of a plain workflow does; inside a run it stays a coroutine to await."""
    if wf.is_async:
        wf.__class__ = _run_when_called(type(wf))
        plain_options = wf.options
        wf.options = lambda **kw: _run_when_called_instance(plain_options(**kw))
    return wf


def _run_when_called_instance(call: Any) -> Any:
    call.__class__ = _run_when_called(type(call))
    return call


def _run_when_called(cls: type) -> type:
    plain_call = cls.__call__

    class _Runs(cls):  # type: ignore[valid-type,misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            result = plain_call(self, *args, **kwargs)
            if inspect.iscoroutine(result) and not _loop_running():
                return asyncio.run(result)
            return result

    return _Runs


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
