"""Do the reducers' hot loops use vector instructions on this CPU? A check of the compiled code.

Each hot kernel of ``streamnorm._kernels`` is compiled afresh on this CPU: a new
``numba.njit(nogil=True, cache=False)`` dispatcher of its ``py_func`` (and of every kernel it
calls), so no machine code cached on another CPU can answer, for the argument types the
accumulator passes. Its assembly is then read:

- the *hot loops* are the source loops of the kernel nested deepest among its innermost
  ones (``for i`` over a chunk's values, ``for j`` over a row's columns), found in the
  Python source; not the set-up or flush loops around them;
- a loop in the assembly is a label with a later conditional jump back to it; the code
  between is its body, and the ``.loc`` line records in the body (numba's debug line
  table, which changes no instruction: the tests check that) say which source loop it
  compiles;
- an assembly loop is *vectorized* when its body holds packed arithmetic (``vpaddd``,
  ``vpmaxub``, ``vpsadbw``, ``vpmovzxbd``, ``vaddpd``, ``vfmadd231pd``, ``vcvtps2pd`` ...;
  moves, shuffles, broadcasts and zeroing idioms do not count). Packed code before the
  loop (a prologue) does not count.

A kernel passes when each of its hot source loops compiles to at least one vectorized
innermost loop. The scalar remainder and alias-check fallback loops LLVM adds beside a
vector loop are expected, and reported.

x86-64 is read in numba's AT&T syntax (``xmm``/``ymm``/``zmm``: 128/256/512 bits). aarch64
is best effort: NEON ``v0.4s`` registers count as 128-bit packed, SVE ``z0.s`` as "SVE"
(scalable width). The histogram kernels are scatter loops (``hist[f, v] += 1``) that no
CPU here vectorizes; they are listed, not checked.

    python benchmarks/check_vectorization.py           # table to results/vectorization.{md,json}
    python benchmarks/check_vectorization.py --check   # also exit 1 naming each scalar hot loop
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import platform
import re
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_info, describe_cpu  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------
# assembly (pure text: unit-tested on synthetic snippets)
# ---------------------------------------------------------------------------

_LABEL = re.compile(r"^([.\w$]+):")
_LOC = re.compile(r"^\.loc\s+(\d+)\s+(\d+)")
_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]*)"(?:\s+"([^"]*)")?')
_X86_COND_JUMP = re.compile(r"^j(?!mp)[a-z]+$")
_ARM_COND_BRANCH = re.compile(r"^(b\.[a-z]+|cbn?z|tbn?z)$")
_X86_PACKED = re.compile(
    r"^v?p(add|sub|mul|madd|maddubs|sadbw|max|min|and|andn|or|xor|sll|srl|sra|cmp|abs|avg"
    r"|sign|test|ternlog|blend|movzx|movsx|dp)\w*$"
    r"|^v?(add|sub|mul|div|max|min|sqrt|and|andn|or|xor|cmp\w*|blendv?|fn?m(add|sub)\w*)p[sd]$"
    r"|^v?cvtt?(ps|pd|dq|qq|udq|uqq)2(ps|pd|dq|qq|udq|uqq)\w*$"
)
_X86_SCALAR = re.compile(
    r"^v?(add|sub|mul|div|max|min|sqrt|fn?m(add|sub)\w*|u?comi|cmp\w*)s[sd]$"
    r"|^v?cvt\w*(s[sd]2|2s[sd]|si2)\w*$"
    r"|^(add|sub|imul|mul|inc|dec|neg|cmp|test|and|or|xor|not|shl|shr|sar|adc|sbb|cmov[a-z]+)[bwlq]?$"
)
_ARM_MOVES = re.compile(r"^(ld|st|ldr|str|ldp|stp|ldur|stur|mov|dup|ins|umov|smov|fmov|prfm)")
_ARM_SCALAR = re.compile(r"^(add|adds|sub|subs|mul|madd|cmp|cmn|csel|cinc|and|orr|eor|lsl|lsr|asr"
                         r"|fadd|fsub|fmul|fmadd|fcmp|fcsel|fmax|fmin|fmaxnm|fminnm|sxt\w|uxt\w)$")
_X86_WIDTH = {"xmm": 128, "ymm": 256, "zmm": 512}
_X86_LANE = {"b": 8, "w": 16, "d": 32, "q": 64}
_ARM = ("aarch64", "arm64")


@dataclass
class Instruction:
    """One machine instruction: its mnemonic and operand text."""

    mnemonic: str
    operands: str


@dataclass
class Loop:
    """One loop of a function's assembly: label, line span, what its body computes."""

    label: str
    start: int
    end: int
    packed: int = 0
    scalar: int = 0
    width: int | str = 0
    innermost: bool = True
    source_lines: list[int] = field(default_factory=list)
    lane_bits: list[int] = field(default_factory=list)

    @property
    def vectorized(self) -> bool:
        return self.packed > 0


def parse(lines: list[str]) -> list[Instruction | str | tuple[int, int]]:
    """Each line as an :class:`Instruction`, a label (str), a ``.loc`` ``(file, line)`` or ``""``.

    >>> parse([".LBB0_1:", "\\t.loc\\t1 42 3", "\\tvpaddd\\t%ymm0, %ymm1, %ymm1", "\\t.p2align 4"])
    ['.LBB0_1', (1, 42), Instruction(mnemonic='vpaddd', operands='%ymm0, %ymm1, %ymm1'), '']
    """
    out: list[Instruction | str | tuple[int, int]] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith(("#", "//", ";")):
            out.append("")
            continue
        line = re.split(r"\s(?:#|//)", line)[0].strip()
        label = _LABEL.match(line)
        loc = _LOC.match(line)
        if label:
            out.append(label.group(1))
        elif loc:
            out.append((int(loc.group(1)), int(loc.group(2))))
        elif not line or line.startswith("."):
            out.append("")
        else:
            mnemonic, _, operands = line.replace("\t", " ").partition(" ")
            out.append(Instruction(mnemonic.lower(), operands.strip()))
    return out


def classify(ins: Instruction, arch: str = "x86_64") -> tuple[str, int | str]:
    """``("packed", width)``, ``("scalar", 0)`` or ``("other", 0)`` for one instruction.

    >>> classify(Instruction("vpaddd", "%ymm1, %ymm2, %ymm2"))
    ('packed', 256)
    >>> classify(Instruction("vaddsd", "%xmm1, %xmm2, %xmm2"))
    ('scalar', 0)
    >>> classify(Instruction("vpxor", "%xmm0, %xmm0, %xmm0"))  # zeroing idiom
    ('other', 0)
    >>> classify(Instruction("add", "v0.4s, v1.4s, v2.4s"), "aarch64")
    ('packed', 128)
    """
    m, ops = ins.mnemonic, ins.operands
    if arch in _ARM:
        vregs = re.findall(r"\b([vz])\d+\.\d*[bhsdq]\b", ops)
        if vregs and not _ARM_MOVES.match(m):
            return "packed", ("SVE" if "z" in vregs else 128)
        return ("scalar", 0) if _ARM_SCALAR.match(m) else ("other", 0)
    regs = re.findall(r"%([xyz]mm)(\d+)", ops)
    if _X86_PACKED.match(m):
        if re.search(r"xor|sub|andn", m) and len(regs) >= 2 and len({f"{k}{n}" for k, n in regs}) == 1:
            return "other", 0  # x ^ x, x - x: the idiom that zeroes a register
        return "packed", max((_X86_WIDTH[kind] for kind, _ in regs), default=128)
    return ("scalar", 0) if _X86_SCALAR.match(m) else ("other", 0)


def lane_bits(mnemonic: str) -> int | None:
    """Bits per lane of an x86 packed op's result (``None`` where the mnemonic does not say).

    Lanes of 64 bits on 8-bit data mean the loop widened each byte eight times over.

    Bitwise ops (``vpxorq``, ``vpandd``, ``vpternlogq``) say nothing of lanes: AVX-512
    spells them with a lane size that only matters under a write mask.

    >>> [lane_bits(m) for m in ("vpminub", "vpmovzxbq", "vpmaddwd", "vpsadbw", "vcvtps2pd", "vaddps", "vpxor")]
    [8, 64, 32, 64, 64, 32, None]
    >>> [lane_bits(m) for m in ("vpxorq", "vpandd", "vpternlogq", "vpdpwssd")]
    [None, None, None, 32]
    """
    special = {"vpmaddwd": 32, "pmaddwd": 32, "vpsadbw": 64, "psadbw": 64, "vpmaddubsw": 16, "pmaddubsw": 16,
               "vpdpwssd": 32, "vpdpbusd": 32}
    if re.match(r"^v?p(xor|and|andn|or|ternlog)[dq]?$", mnemonic):
        return None
    if mnemonic in special:
        return special[mnemonic]
    if mnemonic.endswith(("pd", "2pd")):
        return 64
    if mnemonic.endswith(("ps", "2ps")):
        return 32
    if re.match(r"^v?p", mnemonic) and mnemonic[-1] in _X86_LANE:
        return _X86_LANE[mnemonic[-1]]
    return None


def find_loops(lines: list[str], arch: str = "x86_64", files: set[int] | None = None) -> list[Loop]:
    """Loops of one function's assembly: a label and a later conditional jump back to it.

    The body is the code from the label to the last such jump; a loop whose span holds
    another is not innermost. ``source_lines`` are the ``.loc`` lines in force on the
    body's instructions (of the debug ``files`` given, or all).

    >>> asm = ".LBB0_1:\\n\\tvpaddd %ymm0, %ymm1, %ymm1\\n\\tcmpq %rax, %rcx\\n\\tjne .LBB0_1\\n"
    >>> [(lo.label, lo.vectorized, lo.width, lo.packed, lo.scalar) for lo in find_loops(asm.splitlines())]
    [('.LBB0_1', True, 256, 1, 1)]
    """
    cond = _ARM_COND_BRANCH if arch in _ARM else _X86_COND_JUMP
    items = parse(lines)
    where: dict[str, int] = {}
    ends: dict[str, int] = {}
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            where[item] = i
        elif isinstance(item, Instruction) and cond.match(item.mnemonic):
            target = item.operands.split(",")[-1].strip()
            if target in where:
                ends[target] = i
    loops = [Loop(label, where[label], end) for label, end in ends.items()]
    for loop in loops:
        loop.innermost = not any(o is not loop and loop.start <= o.start and o.end <= loop.end for o in loops)
        _measure(loop, items, arch, files)
    return sorted(loops, key=lambda lo: lo.start)


def _measure(loop: Loop, items: list, arch: str, files: set[int] | None) -> None:
    """Count the packed and scalar ops of ``loop``'s body, its widest register, its source lines."""
    line = 0
    for item in items[: loop.start]:
        if isinstance(item, tuple):
            line = item[1] if files is None or item[0] in files else 0
    widths: list[int | str] = []
    lanes: set[int] = set()
    seen: set[int] = set()
    for item in items[loop.start : loop.end + 1]:
        if isinstance(item, tuple):
            line = item[1] if files is None or item[0] in files else 0
            continue
        if not isinstance(item, Instruction):
            continue
        if line:
            seen.add(line)
        kind, width = classify(item, arch)
        if kind == "packed":
            loop.packed += 1
            widths.append(width)
            if arch not in _ARM and lane_bits(item.mnemonic):
                lanes.add(lane_bits(item.mnemonic))
        elif kind == "scalar":
            loop.scalar += 1
    loop.source_lines = sorted(seen)
    loop.lane_bits = sorted(lanes)
    if widths:
        loop.width = "SVE" if "SVE" in widths else max(w for w in widths if isinstance(w, int))


def functions(asm: str) -> dict[str, list[str]]:
    """Split a module's assembly into ``{symbol: lines}``, one entry per function."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in asm.splitlines():
        head = re.match(r"^\s*\.type\s+([^,\s]+),\s*[@%]function", line)
        if head:
            current = out.setdefault(head.group(1), [])
        elif re.match(r"^\.Lfunc_end\d+:", line):
            current = None
        elif current is not None:
            current.append(line)
    return out


def debug_files(asm: str, filename: str) -> set[int]:
    """Numbers the ``.file`` directives of ``asm`` give to ``filename``."""
    out = set()
    for m in map(_FILE.match, asm.splitlines()):
        if m and Path(m.group(3) or m.group(2)).name == Path(filename).name:
            out.add(int(m.group(1)))
    return out


def kernel_symbol(symbols: list[str], name: str) -> str | None:
    """The compiled body of ``streamnorm._kernels.name`` (not its CPython or C wrapper)."""
    tag = f"_kernels{len(name)}{name}B"
    for sym in symbols:
        if tag in sym and not sym.startswith(("_ZN7cpython", "cfunc.", "cpython.")):
            return sym
    return None


# ---------------------------------------------------------------------------
# source loops
# ---------------------------------------------------------------------------


@dataclass
class SourceLoop:
    """A ``for``/``while`` loop of a kernel's Python source: file lines, nesting depth."""

    first: int
    last: int
    depth: int
    innermost: bool


def source_loops(source: str, first_line: int = 1) -> list[SourceLoop]:
    """The loops of one function's ``source`` (its first line is file line ``first_line``).

    >>> src = "def f(x):\\n    for i in x:\\n        for j in x:\\n            pass\\n    while x:\\n        x = 0\\n"
    >>> [(lo.first, lo.last, lo.depth, lo.innermost) for lo in source_loops(src)]
    [(2, 4, 0, False), (3, 4, 1, True), (5, 6, 0, True)]
    """
    out: list[SourceLoop] = []

    def visit(node: ast.AST, depth: int) -> bool:
        has_loop = False
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.For, ast.While)):
                has_loop = True
                loop = SourceLoop(child.lineno + first_line - 1, child.end_lineno + first_line - 1, depth, True)
                out.append(loop)
                loop.innermost = not visit(child, depth + 1)
            elif visit(child, depth):
                has_loop = True
        return has_loop

    visit(ast.parse(textwrap.dedent(source)), 0)
    return sorted(out, key=lambda lo: lo.first)


def hot_source_loops(loops: list[SourceLoop]) -> list[SourceLoop]:
    """Innermost loops nested deepest: where a kernel spends its time."""
    inner = [lo for lo in loops if lo.innermost]
    deepest = max((lo.depth for lo in inner), default=0)
    return [lo for lo in inner if lo.depth == deepest]


# ---------------------------------------------------------------------------
# verdicts
# ---------------------------------------------------------------------------


@dataclass
class Verdict:
    """One kernel and dtype: each hot source loop and the assembly loops compiled from it."""

    kernel: str
    dtype: str
    holder: str
    hot: list[tuple[SourceLoop, list[Loop]]] = field(default_factory=list)
    note: str = ""
    max_lane_bits: int | None = None

    @property
    def widened(self) -> bool:
        """Whether a main loop computes in lanes wider than ``max_lane_bits`` (e.g. bytes in 64-bit lanes)."""
        if self.max_lane_bits is None:
            return False
        return any(b > self.max_lane_bits for lo in self.main_loops() for b in lo.lane_bits)

    @property
    def scalar_loops(self) -> list[SourceLoop]:
        return [src for src, compiled in self.hot if not any(lo.vectorized for lo in compiled)]

    @property
    def vectorized(self) -> bool:
        return bool(self.hot) and not self.scalar_loops

    def main_loops(self) -> list[Loop]:
        """Per hot source loop, its assembly loop with the most packed ops (else the busiest)."""
        return [max(compiled, key=lambda lo: (lo.packed, lo.scalar)) for _, compiled in self.hot if compiled]

    def row(self) -> dict:
        mains = self.main_loops()
        widths = [lo.width for lo in mains if lo.vectorized]
        width = "SVE" if "SVE" in widths else max((w for w in widths if isinstance(w, int)), default=0)
        return {"kernel": self.kernel, "dtype": self.dtype, "vectorized": self.vectorized,
                "width_bits": width, "lane_bits": sorted({b for lo in mains for b in lo.lane_bits}),
                "hot_in": self.holder,
                "hot_source_lines": [[src.first, src.last] for src, _ in self.hot],
                "hot_loops": len(self.hot), "vector_hot_loops": len(self.hot) - len(self.scalar_loops),
                "packed_ops": sum(lo.packed for lo in mains), "scalar_ops": sum(lo.scalar for lo in mains),
                "asm_loops": sum(len(compiled) for _, compiled in self.hot), "note": self.note}

    def widening(self) -> str:
        lanes = max(b for lo in self.main_loops() for b in lo.lane_bits)
        return f"{self.kernel} {self.dtype} ({lanes}-bit lanes, at most {self.max_lane_bits} needed)"

    def complaint(self) -> str:
        spans = ", ".join(f"{s.first}-{s.last}" for s in self.scalar_loops)
        where = f"lines {spans}" if spans else "no hot loop found"
        return f"{self.kernel} {self.dtype} ({self.holder}, _kernels.py {where})"


def judge(kernel: str, dtype: str, holder: str, asm_lines: list[str], hot: list[SourceLoop],
          arch: str = "x86_64", files: set[int] | None = None, note: str = "") -> Verdict:
    """Match each hot source loop with the innermost assembly loops compiled from it.

    An assembly loop belongs to the hot source loop holding most of its ``.loc`` lines.
    A source loop LLVM unrolled completely (a short fixed lane loop) has no assembly loop
    of its own: it is judged by the innermost assembly loops its lines were unrolled into.

    >>> asm = ["\\t.loc 1 5 0", ".LBB0_1:", "\\tvaddpd %zmm0, %zmm1, %zmm1", "\\tjne .LBB0_1"]
    >>> judge("k", "float64", "k", asm, [SourceLoop(4, 6, 1, True)]).row()["width_bits"]
    512
    """
    compiled = [lo for lo in find_loops(asm_lines, arch, files) if lo.innermost and lo.source_lines]
    verdict = Verdict(kernel, dtype, holder, note=note)
    for src in hot:
        share = [(lo, sum(src.first <= n <= src.last for n in lo.source_lines)) for lo in compiled]
        mine = [lo for lo, n in share if 2 * n > len(lo.source_lines)] or [lo for lo, n in share if n]
        verdict.hot.append((src, mine))
    return verdict


# ---------------------------------------------------------------------------
# the kernels, with the argument types the accumulator passes them
# ---------------------------------------------------------------------------

# Lanes a kernel's hot loop needs at most: 8-bit values fit uint32 sums and
# squares, so 64-bit lanes mean numba's widening of integer arithmetic reached
# the loop (it made u8_planes 4x slower).
MAX_LANE_BITS = {"u8_planes": 32, "u8_cols": 32, "u8_words": 32, "u8_rgb": 32}

SCATTER = {
    "u8_hist_planes": "scatter, not checked: hist[f, v] += 1 increments a data-dependent bin "
                      "(no conflict-free vector scatter-add)",
    "u8_hist_cols": "scatter, not checked: the same data-dependent bin increment",
}
# Line tables only: the hot function's instructions stay those of a plain njit
# (tests/test_vectorization_check.py::test_debug_line_tables_change_no_instruction).
DEBUG_LINES = {"debug": True, "boundscheck": False, "_dbg_optnone": False, "_dbg_extend_lifetimes": False}


def _kernels():
    from streamnorm import _kernels

    return _kernels


def cases() -> list[tuple[str, str, str, tuple, str]]:
    """``(kernel, dtype, function holding the hot loops, args, note)`` per check.

    The arguments mirror ``_int_moments.int_moments`` / ``_float_kernels``: unsigned
    C-contiguous views, the xor scalar of the view's dtype, int64 partials, float64
    moments and the nan policy as an int.
    """
    import numpy as np

    out = []
    for bits, udt in ((8, np.uint8), (16, np.uint16), (32, np.uint32)):
        partials = tuple(np.zeros(64, np.int64) for _ in range(6))
        out.append((f"u{bits}_planes", f"uint{bits}/int{bits}", f"u{bits}_planes",
                    (np.zeros((2, 3, 4096), udt), udt(0), *partials[:4], partials[4][:3], partials[5][:3]), ""))
        out.append((f"u{bits}_cols", f"uint{bits}/int{bits}", f"u{bits}_cols",
                    (np.zeros((256, 64), udt), udt(0), *partials), ""))

    words = (np.zeros(3 * 1024, np.uint32), np.uint32(0), *(np.zeros(4, np.int64) for _ in range(4)))
    out.append(("u8_words", "uint8/int8", "u8_words", words, "1, 2 or 4 channels: a byte position each"))
    out.append(("u8_rgb", "uint8/int8", "u8_rgb", words, "3 channels: 4 pixels in 3 words"))

    def moments(n: int) -> tuple:
        return (np.zeros(n), np.zeros(n), np.zeros(n, np.int64), np.zeros(n), np.zeros(n),
                np.full(n, np.inf), np.full(n, -np.inf), 0)

    for fdt in (np.float32, np.float64):
        name = np.dtype(fdt).name
        out.append(("float_cols", name, "float_cols", (np.zeros((64, 64), fdt), *moments(64)),
                    "one pass about a guessed centre; mean and M2 passes where the guess is off"))
        out.append(("float_planes", name, "float_cols", (np.zeros((2, 3, 4096), fdt), *moments(3)),
                    "spans reduced by float_cols as (rows, 64 lanes)"))
    return out


def compile_fresh(name: str, args: tuple, lines_in: str | None = None):
    """A new, uncached dispatcher of ``_kernels.name``, compiled for ``args`` and run once on them.

    The kernels it calls are compiled afresh too (a copy of its globals), so that their
    code, not a cached one, is linked in. Only ``lines_in`` (the function holding the hot
    loops) gets numba's line table: on the others, numba's debug mode changes how LLVM
    inlines them into their caller.
    """
    import numba
    from numba.core.registry import CPUDispatcher

    kernels = _kernels()
    if not kernels.JIT_ENABLED:
        raise SystemExit(f"check_vectorization: {kernels.DISABLE_JIT_ENV} is set; unset it to check compiled code")
    done: dict[str, object] = {}

    def fresh(dispatcher):
        py = dispatcher.py_func
        if py.__name__ not in done:
            scope = dict(py.__globals__)
            for ref in py.__code__.co_names:
                if isinstance(scope.get(ref), CPUDispatcher):
                    scope[ref] = fresh(scope[ref])
            fn = types.FunctionType(py.__code__, scope, py.__name__, py.__defaults__, py.__closure__)
            fn.__qualname__ = py.__qualname__
            debug = DEBUG_LINES if py.__name__ == lines_in else {}
            done[py.__name__] = numba.njit(nogil=True, cache=False, **debug)(fn)
        return done[py.__name__]

    dispatcher = fresh(getattr(kernels, name))
    dispatcher(*args)
    return dispatcher


def check_all(arch: str | None = None) -> list[Verdict]:
    """Compile and judge every case of :func:`cases` on this machine."""
    arch = arch or platform.machine()
    kernels = _kernels()
    verdicts = []
    for kernel, dtype, holder, args, note in cases():
        try:
            asm = "\n".join(compile_fresh(kernel, args, holder).inspect_asm().values())
        except Exception as exc:  # a kernel renamed or its signature changed: the cases must follow
            why = (str(exc).strip().splitlines() or [""])[0]
            raise SystemExit(f"check_vectorization: cannot compile {kernel} ({dtype}) for the accumulator's "
                             f"argument types ({type(exc).__name__}: {why}); update cases() in "
                             f"benchmarks/check_vectorization.py to the kernel's signature") from exc
        funcs = functions(asm)
        symbol = kernel_symbol(list(funcs), holder)
        py = getattr(kernels, holder).py_func
        source, first = inspect.getsourcelines(py)
        hot = hot_source_loops(source_loops("".join(source), first))
        if symbol is None:
            verdicts.append(Verdict(kernel, dtype, holder, [(src, []) for src in hot],
                                    f"no compiled body of {holder} in the assembly"))
            continue
        files = debug_files(asm, inspect.getsourcefile(py))
        verdict = judge(kernel, dtype, holder, funcs[symbol], hot, arch, files, note)
        verdict.max_lane_bits = MAX_LANE_BITS.get(kernel)
        verdicts.append(verdict)
    return verdicts


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Vectorization of the reducers' hot loops",
        "",
        (f"Assembly of a fresh, uncached numba dispatcher per kernel (`{meta['command']}`), "
         f"{meta['machine']}. CPU vector flags: {', '.join(meta['cpu_vector_flags']) or 'none'}."),
        "",
        ("Hot loops: the innermost source loops nested deepest (their `_kernels.py` lines). "
         "Widest: the widest vector register in their vector loops; lanes: the bits per lane "
         "of their packed results (64-bit lanes on 8-bit data: each byte widened eight times). "
         "Packed / scalar ops: "
         "counted in the body of each hot loop's main vector loop (scalar ops there are loop "
         "control); asm loops: vector bodies plus the scalar remainder and alias-check "
         "fallback loops LLVM adds."),
        "",
        "| kernel | dtype | vectorized | widest (bits) | lanes (bits) | hot loops (lines) "
        "| vectorized hot loops | packed ops | scalar ops | asm loops | note |",
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.get("scatter"):
            lines.append(f"| {r['kernel']} | uint8/int8 | - | - | - | - | - | - | - | - | {r['note']} |")
            continue
        spans = ", ".join(f"{a}-{b}" for a, b in r["hot_source_lines"])
        lines.append(f"| {r['kernel']} | {r['dtype']} | {'yes' if r['vectorized'] else 'NO'} "
                     f"| {r['width_bits'] or '-'} | {', '.join(map(str, r['lane_bits'])) or '-'} "
                     f"| {r['hot_in']} {spans} "
                     f"| {r['vector_hot_loops']} / {r['hot_loops']} | {r['packed_ops']} | {r['scalar_ops']} "
                     f"| {r['asm_loops']} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 naming each kernel whose hot loop is scalar or widens bytes to 64-bit lanes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args(argv)
    import numba

    verdicts = check_all()
    rows = [v.row() for v in verdicts] + [{"kernel": k, "scatter": True, "note": why} for k, why in SCATTER.items()]
    info = cpu_info()
    meta = {"command": "python benchmarks/check_vectorization.py" + (" --check" if args.check else ""),
            "machine": f"{describe_cpu(info)}, Python {platform.python_version()}, numba {numba.__version__}",
            **info}
    text = markdown(rows, meta)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "vectorization.md").write_text(text)
        (RESULTS / "vectorization.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    scalar = [v.complaint() for v in verdicts if not v.vectorized]
    wide = [v.widening() for v in verdicts if v.vectorized and v.widened]
    if args.check and (scalar or wide):
        problems = ([f"scalar hot loop in {'; '.join(scalar)}"] if scalar else []) + (
            [f"values widened past their lanes in {'; '.join(wide)}"] if wide else [])
        print(f"check_vectorization: {'; '.join(problems)} on {describe_cpu(info)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
