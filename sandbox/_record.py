"""Plain record classes for the types on the CLI's run path (``@record``: a small dataclass).

Why not ``dataclasses``: ``sandbox run -- /bin/true`` is measured against bubblewrap, a C
program, and the run path imports ~15 small modules. ``dataclasses`` costs ~6 ms of that start
before the first class exists (it imports ``re``, and with it ``enum``, ``functools``,
``copy``...), then compiles ``__init__``/``__repr__``/``__eq__`` source with ``exec`` for every
class (~0.3 ms each, 13 classes). ``record`` builds the same methods from closures: no
imports, no ``exec``. Type checkers see a dataclass (PEP 681 ``dataclass_transform``).

Supported: field defaults, ``field(default_factory=...)``, positional or keyword construction,
``__post_init__``, ``frozen=True`` (immutable and hashable), ``fields``/``asdict``/``replace``
helpers (the names of their ``dataclasses`` twins). Not supported (not needed here):
inheritance between records, ``InitVar``, ``ClassVar`` fields without the ``ClassVar`` word.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:

    def dataclass_transform(**_kw):
        return lambda f: f


_MISSING: Any = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made fresh per instance (a list, a dict, another record)."""
    return _Factory(default_factory)  # type: ignore[return-value]


class FrozenInstanceError(AttributeError):
    pass


@dataclass_transform(field_specifiers=(field,))
class _Signature:
    """``help(Record)`` and ``inspect.signature`` show the fields, defaults and types instead of
    ``(*args, **kw)``. Built on first use: ``inspect`` is a heavy import for the CLI's path."""

    def __init__(self, specs: list[tuple[str, Any, Any]], cls: type) -> None:
        self.specs, self.cls = specs, cls
        self.sig: Any = None

    def __get__(self, inst: Any, owner: Any = None) -> Any:
        if self.sig is None:
            import inspect

            ann = self.cls.__dict__.get("__annotations__", {})
            self.sig = inspect.Signature([inspect.Parameter(
                    name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ann.get(name, inspect.Parameter.empty),
                    default=(inspect.Parameter.empty if default is _MISSING and factory is None else
                             default if factory is None else f"<{getattr(factory, '__name__', 'factory')}()>"))
                    for name, default, factory in self.specs])
        return self.sig


def record(cls: type[T] | None = None, *, frozen: bool = False) -> Any:
    """Class decorator: ``@record`` or ``@record(frozen=True)``."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def _build(cls: type[T], frozen: bool) -> type[T]:
    specs: list[tuple[str, Any, Any]] = []  # (name, default, factory)
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(ann, str) and ann.startswith(("ClassVar", "typing.ClassVar")):
            continue
        default = cls.__dict__.get(name, _MISSING)
        factory = None
        if isinstance(default, _Factory):
            factory, default = default.make, _MISSING
            delattr(cls, name)
        elif default is _MISSING and specs and (specs[-1][1] is not _MISSING or specs[-1][2]):
            raise TypeError(f"{cls.__name__}: non-default field {name!r} follows a default one")
        specs.append((name, default, factory))
    names = tuple(s[0] for s in specs)
    post_init = getattr(cls, "__post_init__", None)
    setter = object.__setattr__

    nfields, known = len(specs), frozenset(names)

    def __init__(self: Any, *args: Any, **kw: Any) -> None:
        # Values go straight into the instance dict (one update: a frozen record's
        # __setattr__ is bypassed, as dataclasses bypass it with object.__setattr__).
        if len(args) > nfields:
            raise TypeError(f"{cls.__name__}() takes {nfields} arguments, got {len(args)}")
        values = dict(zip(names, args, strict=False))  # fewer args: the rest below
        if kw:
            for name in kw:
                if name in values:
                    raise TypeError(f"{cls.__name__}() got {name!r} twice")
                if name not in known:
                    raise TypeError(f"{cls.__name__}() got an unexpected argument {name!r}")
            values.update(kw)
        if len(values) < nfields:
            for name, default, factory in specs[len(args):]:
                if name not in values:
                    if factory is not None:
                        values[name] = factory()
                    elif default is not _MISSING:
                        values[name] = default
                    else:
                        raise TypeError(f"{cls.__name__}() missing argument {name!r}")
        self.__dict__.update(values)
        if post_init is not None:
            post_init(self)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{cls.__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return [getattr(self, n) for n in names] == [getattr(other, n) for n in names]

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__signature__ = _Signature(specs, cls)  # type: ignore[attr-defined]
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = __repr__  # type: ignore[assignment]
    own_eq = "__eq__" in cls.__dict__  # as dataclasses: a class's own methods win
    if not own_eq:
        cls.__eq__ = __eq__  # type: ignore[assignment]
    cls.__record_fields__ = names  # type: ignore[attr-defined]
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        def __hash__(self: Any) -> int:  # immutable: computed once (policies are dict keys)
            try:
                return self.__dict__["__record_hash__"]  # type: ignore[no-any-return]
            except KeyError:
                h = hash(tuple([getattr(self, n) for n in names]))
                setter(self, "__record_hash__", h)
                return h

        cls.__setattr__ = __setattr__  # type: ignore[assignment]
        cls.__delattr__ = __delattr__  # type: ignore[assignment]
        if "__hash__" not in cls.__dict__ or own_eq:
            cls.__hash__ = __hash__  # type: ignore[assignment]
    elif not own_eq and "__hash__" not in cls.__dict__:
        cls.__hash__ = None  # type: ignore[assignment]  # mutable and compared by value
    return cls


def fields(obj: Any) -> tuple[str, ...]:
    """Field names of a record class or instance, in declaration order."""
    return obj.__record_fields__  # type: ignore[no-any-return]


def is_record(obj: Any) -> bool:
    return hasattr(obj, "__record_fields__")


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with some fields changed (``dataclasses.replace``)."""
    kw = {n: getattr(obj, n) for n in fields(obj)}
    kw.update(changes)
    return obj.__class__(**kw)


def asdict(obj: Any) -> Any:
    """Records (recursively, also inside lists, tuples and dicts) → plain dicts
    (``dataclasses.asdict``); other values are copied as they are."""
    if is_record(obj) and not isinstance(obj, type):
        return {n: asdict(getattr(obj, n)) for n in fields(obj)}
    if isinstance(obj, list | tuple):
        return obj.__class__(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {k: asdict(v) for k, v in obj.items()}
    return obj
