"""Wire format between the sandboxed child and the parent: exit codes, the ==-canonical encoding, the plain-data
decoder.

The child sends each output as a protocol-4, memo-free pickle of exact built-in types (see child.py) plus digests.
The parent never calls ``pickle.loads`` on those bytes: :func:`_safe_unpickle` is a small pure-Python decoder that
accepts plain data only.  This module is loaded by the child too (stdlib imports only, no relative imports).
"""
from __future__ import annotations

import math
import struct
import threading
from typing import Any

REPORT_EXIT_OK = 0
VIOLATION_EXIT = 86
SETUP_EXIT = 87
CANON_MAX_DEPTH = 200
DECODE_MAX_DEPTH = 200


# ----------------------------------------------------------------------------------------------------------------
# The ==-canonical encoding (child and parent)
# ----------------------------------------------------------------------------------------------------------------
class _Unserializable(Exception):
    pass


def _len8(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _canon_int(n: int) -> bytes:
    s = format(n, "x").encode()  # hex: not subject to the 4300-digit str limit
    return b"I" + _len8(len(s)) + s


def _canon_float(f: float) -> tuple[bytes, bool]:
    if f != f:
        return b"n", True
    if f in (math.inf, -math.inf):
        return (b"F+" if f > 0 else b"F-"), False
    if f.is_integer():
        return _canon_int(int(f)), False  # 2.0 == 2, -0.0 == 0
    s = f.hex().encode()
    return b"H" + _len8(len(s)) + s, False


def _canon_scalar(x: Any, t: type) -> tuple[bytes, bool] | None:
    if t is str:
        b = x.encode("utf-8", "surrogatepass")
        return b"S" + _len8(len(b)) + b, False
    if t is int or t is bool:
        return _canon_int(int(x)), False
    if t is float:
        return _canon_float(x)
    if x is None:
        return b"N", False
    if t is complex:
        if x.imag == 0:
            return _canon_float(x.real)
        r, n1 = _canon_float(x.real)
        i, n2 = _canon_float(x.imag)
        return b"C" + r + i, n1 or n2
    if t is bytes:
        return b"B" + _len8(len(x)) + x, False
    if x is Ellipsis:
        return b"E", False
    return None


def _canon(x: Any, depth: int = 0) -> tuple[bytes, bool]:
    """Encoding of a value made of exact built-in types such that, for NaN-free values, a == b iff
    _canon(a) == _canon(b) (numbers by mathematical value, dicts/sets order-free).  Returns (bytes, has_nan)."""
    t = type(x)
    scalar = _canon_scalar(x, t)
    if scalar is not None:
        return scalar
    if depth > CANON_MAX_DEPTH:
        raise _Unserializable("nested too deeply")
    nan = False
    if t is list or t is tuple:
        parts = [b"L" if t is list else b"T", _len8(len(x))]
        for e in x:
            b, n = _canon(e, depth + 1)
            parts.append(b)
            nan = nan or n
        return b"".join(parts), nan
    if t is dict:
        items = []
        for k, v in x.items():
            kb, n1 = _canon(k, depth + 1)
            vb, n2 = _canon(v, depth + 1)
            items.append(kb + vb)  # encodings are prefix-free, so this sorts by key first
            nan = nan or n1 or n2
        items.sort()
        return b"D" + _len8(len(items)) + b"".join(items), nan
    if t is set or t is frozenset:  # set == frozenset in Python: same tag
        elems = []
        for e in x:
            b, n = _canon(e, depth + 1)
            elems.append(b)
            nan = nan or n
        elems.sort()
        return b"Z" + _len8(len(elems)) + b"".join(elems), nan
    raise _Unserializable(f"type {t.__name__}")


def _is_floats_plain(x: Any) -> bool:
    """evalplus.eval.is_floats for values without numpy arrays (what the sandbox can return)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


# ----------------------------------------------------------------------------------------------------------------
# The plain-data decoder (parent)
# ----------------------------------------------------------------------------------------------------------------
class _DecodeError(ValueError):
    pass


_GLOBAL_COMPLEX = object()


class _PlainUnpickler:
    """Decoder of the child's pickles (protocol 4, no memo) accepting only the opcodes that encode
    None/bool/int/float/complex/str/bytes/tuple/list/dict/set/frozenset/Ellipsis.  No globals other than
    builtins.complex/Ellipsis, no memo, no DUP (so no aliasing or cycles), nesting depth bounded (so hashing and
    comparing the result cannot exhaust the C stack).  Each opcode is one small method (see _OPS)."""

    def __init__(self, data: bytes):
        self.data, self.n, self.pos = data, len(data), 0
        self.stack: list = []
        self.depth: list[int] = []
        self.marks: list[int] = []
        self.result: Any = None
        self.stopped = False

    # -- primitives ------------------------------------------------------------------------------------------------
    def take(self, k: int) -> bytes:
        if k < 0 or self.pos + k > self.n:
            raise _DecodeError("truncated")
        b = self.data[self.pos:self.pos + k]
        self.pos += k
        return b

    def uint(self, k: int) -> int:
        return int.from_bytes(self.take(k), "little")

    def push(self, v: Any, d: int = 0) -> None:
        if d > DECODE_MAX_DEPTH:
            raise _DecodeError("nested too deeply")
        self.stack.append(v)
        self.depth.append(d)

    def pop_mark(self) -> tuple[list, int]:
        if not self.marks:
            raise _DecodeError("no mark")
        m = self.marks.pop()
        if m > len(self.stack):
            raise _DecodeError("bad mark")
        items, ds = self.stack[m:], self.depth[m:]
        del self.stack[m:], self.depth[m:]
        if any(v is _GLOBAL_COMPLEX for v in items):
            raise _DecodeError("misplaced global")
        return items, (max(ds) if ds else -1)

    def pop1(self) -> tuple[Any, int]:
        if not self.stack or (self.marks and self.marks[-1] >= len(self.stack)):
            raise _DecodeError("stack underflow")
        v = self.stack.pop()
        if v is _GLOBAL_COMPLEX:
            raise _DecodeError("misplaced global")
        return v, self.depth.pop()

    def top(self, kind: type) -> Any:
        if not self.stack or type(self.stack[-1]) is not kind or (self.marks and self.marks[-1] >= len(self.stack)):
            raise _DecodeError(f"expected a {kind.__name__} on the stack")
        return self.stack[-1]

    def grow(self, d: int) -> None:
        self.depth[-1] = max(self.depth[-1], d + 1)
        if self.depth[-1] > DECODE_MAX_DEPTH:
            raise _DecodeError("nested too deeply")

    # -- opcodes ---------------------------------------------------------------------------------------------------
    def op_stop(self, op: int) -> None:
        if len(self.stack) != 1 or self.marks or self.pos != self.n:
            raise _DecodeError("bad stop")
        self.result, self.stopped = self.stack[0], True

    def op_int(self, op: int) -> None:
        if op == 0x4A:  # BININT
            self.push(int.from_bytes(self.take(4), "little", signed=True))
        elif op == 0x4B:  # BININT1
            self.push(self.take(1)[0])
        elif op == 0x4D:  # BININT2
            self.push(self.uint(2))
        elif op == 0x8A:  # LONG1
            self.push(int.from_bytes(self.take(self.take(1)[0]), "little", signed=True))
        else:  # LONG4
            k = int.from_bytes(self.take(4), "little", signed=True)
            self.push(int.from_bytes(self.take(k), "little", signed=True))

    def op_str(self, op: int) -> None:  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
        k = self.take(1)[0] if op == 0x8C else self.uint(4 if op == 0x58 else 8)
        self.push(self.take(k).decode("utf-8", "surrogatepass"))

    def op_bytes(self, op: int) -> None:  # SHORT_BINBYTES, BINBYTES, BINBYTES8
        k = self.take(1)[0] if op == 0x43 else self.uint(4 if op == 0x42 else 8)
        self.push(bytes(self.take(k)))

    def op_append(self, op: int) -> None:  # APPEND, APPENDS
        if op == 0x61:
            v, d = self.pop1()
            self.top(list).append(v)
        else:
            items, d = self.pop_mark()
            self.top(list).extend(items)
        self.grow(d)

    def op_tuple(self, op: int) -> None:  # TUPLE, TUPLE1..3
        if op == 0x74:
            items, d = self.pop_mark()
            self.push(tuple(items), d + 1)
            return
        popped = [self.pop1() for _ in range(op - 0x84)][::-1]
        self.push(tuple(v for v, _ in popped), max(d for _, d in popped) + 1)

    def op_setitem(self, op: int) -> None:  # SETITEM, SETITEMS
        if op == 0x73:
            v, dv = self.pop1()
            k, dk = self.pop1()
            self.top(dict)[k] = v
            self.grow(max(dk, dv))
            return
        items, d = self.pop_mark()
        if len(items) % 2:
            raise _DecodeError("odd SETITEMS")
        target = self.top(dict)
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
        self.grow(d)

    def op_set(self, op: int) -> None:  # ADDITEMS, FROZENSET
        items, d = self.pop_mark()
        if op == 0x90:
            self.top(set).update(items)
            self.grow(d)
        else:
            self.push(frozenset(items), d + 1)

    def op_global(self, op: int) -> None:  # STACK_GLOBAL: only builtins.complex / builtins.Ellipsis
        name, _ = self.pop1()
        module, _ = self.pop1()
        if module == "builtins" and name == "complex":
            self.push(_GLOBAL_COMPLEX)
        elif module == "builtins" and name == "Ellipsis":
            self.push(Ellipsis)
        else:
            raise _DecodeError(f"global {str(module)[:40]}.{str(name)[:40]} is not allowed")

    def op_construct(self, op: int) -> None:  # NEWOBJ, REDUCE (complex only)
        args, _ = self.pop1()
        if not self.stack or (self.marks and self.marks[-1] >= len(self.stack)):
            raise _DecodeError("stack underflow")
        cls = self.stack.pop()
        self.depth.pop()
        if cls is not _GLOBAL_COMPLEX or type(args) is not tuple or len(args) != 2 or \
                any(type(a) is not float for a in args):
            raise _DecodeError("only complex(float, float) may be constructed")
        self.push(complex(*args))

    def run(self) -> Any:
        ops = _OPS
        while not self.stopped:
            if self.pos >= self.n:
                raise _DecodeError("truncated")
            op = self.data[self.pos]
            self.pos += 1
            handler = ops.get(op)
            if handler is None:
                raise _DecodeError(f"opcode {op:#x} is not accepted")
            try:
                handler(self, op)
            except TypeError as e:  # unhashable set element / dict key
                raise _DecodeError(f"bad value: {e}") from e
            except UnicodeDecodeError as e:
                raise _DecodeError("bad string") from e
        return self.result


_CONSTANTS = {0x4E: None, 0x88: True, 0x89: False}  # NONE, NEWTRUE, NEWFALSE
_EMPTY = {0x5D: list, 0x29: tuple, 0x7D: dict, 0x8F: set}  # EMPTY_LIST/TUPLE/DICT/SET
_P = _PlainUnpickler
_OPS = {
    0x80: lambda u, op: u.take(1),  # PROTO
    0x95: lambda u, op: u.take(8),  # FRAME
    0x2E: _P.op_stop,
    **{op: (lambda u, op: u.push(_CONSTANTS[op])) for op in _CONSTANTS},
    **{op: _P.op_int for op in (0x4A, 0x4B, 0x4D, 0x8A, 0x8B)},
    0x47: lambda u, op: u.push(struct.unpack_from(">d", u.take(8))[0]),  # BINFLOAT
    **{op: _P.op_str for op in (0x8C, 0x58, 0x8D)},
    **{op: _P.op_bytes for op in (0x43, 0x42, 0x8E)},
    **{op: (lambda u, op: u.push(_EMPTY[op]())) for op in _EMPTY},
    0x28: lambda u, op: u.marks.append(len(u.stack)),  # MARK
    0x61: _P.op_append, 0x65: _P.op_append,
    **{op: _P.op_tuple for op in (0x74, 0x85, 0x86, 0x87)},
    0x73: _P.op_setitem, 0x75: _P.op_setitem,
    0x90: _P.op_set, 0x91: _P.op_set,
    0x93: _P.op_global,
    0x81: _P.op_construct, 0x52: _P.op_construct,
}


def _safe_unpickle(data: bytes) -> Any:
    """Decode the child's plain-data pickle; safe on hostile input, unlike pickle.loads."""
    return _PlainUnpickler(data).run()


_FOREIGN_CLASSES: dict[tuple[type, str], type] = {}
_FOREIGN_LOCK = threading.Lock()


def _foreign(value: Any, typename: str) -> Any:
    """Wrap a decoded top-level value whose original type was not the exact built-in in a trusted stand-in
    subclass, so evalplus's `type(out) == type(exp)` sees the difference while `==` keeps value semantics."""
    base = type(value)
    if base in (bool, type(None), type(Ellipsis)):
        return value  # not subclassable
    key = (base, typename)
    with _FOREIGN_LOCK:
        cls = _FOREIGN_CLASSES.get(key)
        if cls is None:
            cls = type(f"Sandboxed[{typename}]", (base,), {"__slots__": ()} if base not in (dict, list, set) else {})
            _FOREIGN_CLASSES[key] = cls
    return cls(value)
