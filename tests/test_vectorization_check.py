"""benchmarks/check_vectorization.py: the check that the reducers' hot loops compile to vector
code on the CPU at hand (issue 9), and its reading of assembly on synthetic snippets."""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "check_vectorization.py"
CHECKED = {"u8_planes", "u8_cols", "u8_words", "u8_rgb", "u16_planes", "u16_cols", "u32_planes",
           "u32_cols", "float_cols", "float_planes"}


@pytest.fixture(scope="module")
def cv():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("check_vectorization", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    full.pop("STREAMNORM_DISABLE_JIT", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=900)


# -- the check on today's kernels ------------------------------------------------------------
@pytest.mark.slow
def test_check_passes_on_todays_kernels_and_names_the_cpu():
    proc = run_script("--check", "--no-write")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    kernels = {line.split("|")[1].strip() for line in rows}
    assert CHECKED <= kernels
    for line in rows:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if cells[0] in CHECKED:
            assert cells[2] == "yes", line
            assert cells[3] == "SVE" or int(cells[3]) >= 128, line
            assert cells[4] != "-", line  # lane widths of its packed ops
            assert int(cells[7]) > 0, line  # packed ops in the hot loop
    assert "u8_hist_planes" in kernels and "scatter, not checked" in proc.stdout
    sys.path.insert(0, str(SCRIPT.parent))
    from _machine import describe_cpu

    assert describe_cpu() in proc.stdout


@pytest.mark.slow
def test_check_fails_on_the_scalar_code_of_llvm_without_its_vectorizers():
    # the same kernels compiled with LLVM's loop and SLP vectorizers off: every hot loop scalar
    env = {"NUMBA_LOOP_VECTORIZE": "0", "NUMBA_SLP_VECTORIZE": "0"}
    proc = run_script("--check", "--no-write", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("check_vectorization: scalar hot loop in ")
    for kernel in CHECKED:
        assert f"{kernel} " in line
    assert "float_cols float32 (float_cols, _kernels.py lines " in line


def test_check_exits_1_with_one_line_naming_each_scalar_hot_loop(cv, monkeypatch, capsys):
    hot = [cv.SourceLoop(10, 14, 2, True), cv.SourceLoop(20, 22, 2, True)]
    vector = cv.Loop(".LBB0_1", 0, 5, packed=4, scalar=2, width=256, source_lines=[11, 12])
    scalar = cv.Loop(".LBB0_2", 9, 20, packed=0, scalar=9, source_lines=[21])
    good = cv.Verdict("u8_planes", "uint8/int8", "u8_planes", [(hot[0], [vector])])
    bad = cv.Verdict("float_cols", "float32", "float_cols", [(hot[0], [vector]), (hot[1], [scalar])])
    none = cv.Verdict("u16_cols", "uint16/int16", "u16_cols", [(hot[0], [])])
    monkeypatch.setattr(cv, "check_all", lambda: [good, bad, none])
    assert cv.main(["--check", "--no-write"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "float_cols float32 (float_cols, _kernels.py lines 20-22)" in err
    assert "u16_cols uint16/int16 (u16_cols, _kernels.py lines 10-14)" in err
    assert "u8_planes" not in err
    monkeypatch.setattr(cv, "check_all", lambda: [good])
    assert cv.main(["--check", "--no-write"]) == 0
    assert capsys.readouterr().err == ""


def test_check_fails_when_8bit_values_are_widened_to_64bit_lanes(cv, monkeypatch, capsys):
    # the u8_planes of before issue 9: numba's 64-bit integer arithmetic reached the loop
    hot = [cv.SourceLoop(10, 14, 2, True)]
    widened = cv.Loop(".LBB0_1", 0, 5, packed=4, scalar=2, width=512, source_lines=[11], lane_bits=[8, 64])
    narrow = cv.Loop(".LBB0_1", 0, 5, packed=4, scalar=2, width=512, source_lines=[11], lane_bits=[8, 32])
    verdict = cv.Verdict("u8_planes", "uint8/int8", "u8_planes", [(hot[0], [widened])], max_lane_bits=32)
    monkeypatch.setattr(cv, "check_all", lambda: [verdict])
    assert cv.main(["--check", "--no-write"]) == 1
    err = capsys.readouterr().err.strip()
    assert "values widened past their lanes in u8_planes uint8/int8 (64-bit lanes, at most 32 needed)" in err
    assert "scalar hot loop" not in err
    verdict.hot = [(hot[0], [narrow])]
    assert cv.main(["--check", "--no-write"]) == 0
    verdict.hot, verdict.max_lane_bits = [(hot[0], [widened])], None  # float kernels: 64-bit lanes are right
    assert cv.main(["--check", "--no-write"]) == 0


@pytest.mark.parametrize("case", [("u8_planes", "uint8/int8", "u8_planes", (1, 2), ""),
                                  ("no_such_kernel", "uint8/int8", "no_such_kernel", (), "")])
def test_a_kernel_that_no_longer_compiles_for_its_case_is_named(cv, monkeypatch, case):
    monkeypatch.setattr(cv, "cases", lambda: [case])
    with pytest.raises(SystemExit) as info:
        cv.check_all()
    message = str(info.value)
    assert message.startswith(f"check_vectorization: cannot compile {case[0]} (uint8/int8)")
    assert "update cases() in benchmarks/check_vectorization.py" in message


def test_table_and_json_go_to_results_with_the_machine(cv, monkeypatch, tmp_path):
    hot = cv.SourceLoop(10, 14, 2, True)
    loop = cv.Loop(".LBB0_1", 0, 5, packed=6, scalar=2, width=512, source_lines=[11])
    monkeypatch.setattr(cv, "check_all", lambda: [cv.Verdict("u8_cols", "uint8/int8", "u8_cols", [(hot, [loop])])])
    monkeypatch.setattr(cv, "RESULTS", tmp_path)
    assert cv.main([]) == 0
    data = json.loads((tmp_path / "vectorization.json").read_text())
    assert data["meta"]["cpu_model"] and data["meta"]["cpu_isa"] and data["meta"]["cpu_cores"]
    row = data["rows"][0]
    assert (row["kernel"], row["vectorized"], row["width_bits"], row["packed_ops"]) == ("u8_cols", True, 512, 6)
    text = (tmp_path / "vectorization.md").read_text()
    assert cv.describe_cpu() in text and "| u8_cols | uint8/int8 | yes | 512 | - |" in text


def test_debug_line_tables_change_no_hot_loop(cv):
    # the check reads numba's .loc line records: the main vector loop it judges for each
    # hot source loop must be one the plain build has too (line records may change code
    # elsewhere: a cold per-block loop of float_cols stays scalar in the debug build)
    import inspect

    for kernel, dtype, holder, args, _ in cv.cases():
        plain, lined = ("\n".join(cv.compile_fresh(kernel, args, lines_in).inspect_asm().values())
                        for lines_in in (None, holder))
        funcs = cv.functions(plain)
        body = funcs[cv.kernel_symbol(list(funcs), holder)]
        shipped = {(lo.packed, str(lo.width), tuple(lo.lane_bits)) for lo in cv.find_loops(body)
                   if lo.innermost and lo.vectorized}
        py = getattr(cv._kernels(), holder).py_func
        source, first = inspect.getsourcelines(py)
        hot = cv.hot_source_loops(cv.source_loops("".join(source), first))
        funcs = cv.functions(lined)
        verdict = cv.judge(kernel, dtype, holder, funcs[cv.kernel_symbol(list(funcs), holder)], hot,
                           files=cv.debug_files(lined, inspect.getsourcefile(py)))
        judged = [(lo.packed, str(lo.width), tuple(lo.lane_bits)) for lo in verdict.main_loops()]
        assert judged and set(judged) <= shipped, (kernel, dtype, judged, shipped)


def test_script_doctests(cv):
    result = doctest.testmod(cv, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


# -- reading assembly: synthetic snippets --------------------------------------------------------
VECTOR_LOOP = """\
\t.loc\t1 40 0
\tvpbroadcastb\t%edx, %xmm0
.LBB0_31:
\t.loc\t1 41 0
\tvpxor\t(%r10,%rax), %xmm0, %xmm4
\tvpmovzxbd\t%xmm4, %zmm5
\tvpmaddwd\t%zmm5, %zmm5, %zmm5
\tvpaddd\t(%rbx,%rax,4), %zmm5, %zmm5
\tvmovdqu64\t%zmm5, (%rbx,%rax,4)
\tvpminub\t(%rbp,%rax), %xmm4, %xmm5
\taddq\t$16, %rax
\tcmpq\t%rax, %rdi
\tjne\t.LBB0_31
"""

SCALAR_LOOP = """\
.LBB0_21:
\t.loc\t1 42 0
\tmovzbl\t(%r10,%r9), %r12d
\txorb\t%dl, %r12b
\timull\t%r12d, %r13d
\taddw\t%r12w, (%r14,%r9,2)
\tcmpb\t%r13b, %r12b
\tcmovbl\t%r12d, %r13d
\tvpxor\t%xmm1, %xmm1, %xmm1
\tvaddsd\t%xmm2, %xmm3, %xmm3
\tdecq\t%rcx
\tjne\t.LBB0_21
"""

PROLOGUE_ONLY = """\
\tvpxor\t%xmm0, %xmm0, %xmm0
\tvpaddd\t%ymm1, %ymm2, %ymm2
\tvmaxpd\t%zmm3, %zmm4, %zmm4
.LBB0_7:
\t.loc\t1 41 0
\taddq\t%rsi, %rax
\tcmovlq\t%rsi, %rdx
\tincq\t%rcx
\tcmpq\t%rcx, %r8
\tjl\t.LBB0_7
\tvpaddq\t%zmm0, %zmm1, %zmm1
"""


def test_vectorized_loop_is_vectorized_with_its_widest_register(cv):
    (loop,) = cv.find_loops(VECTOR_LOOP.splitlines())
    assert (loop.label, loop.vectorized, loop.width, loop.innermost) == (".LBB0_31", True, 512, True)
    assert (loop.packed, loop.scalar) == (5, 2)  # xor, zero-extend, multiply-add, add, min / add, cmp
    assert loop.source_lines == [41]
    assert loop.lane_bits == [8, 32]  # bytes (xor, min) and int32 (zero-extend, multiply-add, add)


def test_scalar_loop_is_scalar_despite_a_zeroing_idiom(cv):
    (loop,) = cv.find_loops(SCALAR_LOOP.splitlines())
    assert not loop.vectorized and loop.width == 0 and loop.packed == 0
    assert loop.scalar == 7


def test_vector_ops_only_in_the_prologue_or_after_the_loop_count_as_scalar(cv):
    (loop,) = cv.find_loops(PROLOGUE_ONLY.splitlines())
    assert not loop.vectorized and loop.packed == 0 and loop.scalar == 4
    verdict = cv.judge("k", "int64", "k", PROLOGUE_ONLY.splitlines(), [cv.SourceLoop(40, 43, 1, True)])
    assert not verdict.vectorized and "lines 40-43" in verdict.complaint()


def test_forward_jumps_and_unconditional_back_jumps_are_not_loops(cv):
    asm = ".LBB0_1:\n\tvpaddd %ymm0, %ymm1, %ymm1\n\tjmp .LBB0_1\n\tjne .LBB0_2\n.LBB0_2:\n\tretq\n"
    assert cv.find_loops(asm.splitlines()) == []


def test_hot_source_loop_is_vectorized_when_one_of_its_compiled_loops_is(cv):
    # LLVM's vector body plus the scalar remainder of the same source loop, and a scalar
    # loop of a cold source loop elsewhere
    cold = ".LBB0_3:\n\t.loc\t1 60 0\n\taddq %rax, %rbx\n\tjne .LBB0_3\n"
    asm = (VECTOR_LOOP + SCALAR_LOOP + cold).splitlines()
    verdict = cv.judge("u8_cols", "uint8/int8", "u8_cols", asm, [cv.SourceLoop(40, 43, 2, True)])
    assert verdict.vectorized
    row = verdict.row()
    assert (row["width_bits"], row["packed_ops"], row["asm_loops"]) == (512, 5, 2)
    # the same hot loop with only the scalar body: scalar
    verdict = cv.judge("u8_cols", "uint8/int8", "u8_cols", (SCALAR_LOOP + cold).splitlines(),
                       [cv.SourceLoop(40, 43, 2, True)])
    assert not verdict.vectorized


def test_every_hot_pass_needs_its_own_vector_loop(cv):
    # two hot source loops (a mean pass and an M2 pass): a vector loop for one is not enough
    second = SCALAR_LOOP.replace(".LBB0_21", ".LBB0_40").replace("1 42 0", "1 50 0")
    hot = [cv.SourceLoop(40, 43, 2, True), cv.SourceLoop(49, 52, 2, True)]
    verdict = cv.judge("float_cols", "float32", "float_cols", (VECTOR_LOOP + second).splitlines(), hot)
    assert not verdict.vectorized and verdict.scalar_loops == [hot[1]]


def test_fully_unrolled_lane_loop_is_judged_by_the_loop_it_was_unrolled_into(cv):
    # source: for i in range(0, n, 16) (lines 30-34) / for lane in range(16) (lines 32-34);
    # LLVM unrolls the lane loop into packed code of the i loop: no asm loop of its own
    lane = cv.SourceLoop(32, 34, 2, True)
    body = ".LBB0_9:\n\t.loc\t1 31 0\n\taddq $16, %rax\n\t.loc\t1 33 0\n\tvpaddd %zmm0, %zmm1, %zmm1\n" \
           "\t.loc\t1 31 0\n\tcmpq %rax, %rdi\n\t.loc\t1 30 0\n\tjne .LBB0_9\n"
    verdict = cv.judge("k", "uint8", "k", body.splitlines(), [lane])
    assert verdict.vectorized and verdict.row()["width_bits"] == 512
    scalar = body.replace("vpaddd %zmm0, %zmm1, %zmm1", "addl %ecx, %edx")
    assert not cv.judge("k", "uint8", "k", scalar.splitlines(), [lane]).vectorized


def test_loc_of_other_files_is_ignored(cv):
    asm = VECTOR_LOOP.replace("\t.loc\t1 41 0", "\t.loc\t2 41 0").splitlines()
    (loop,) = cv.find_loops(asm, files={1})
    assert loop.source_lines == []  # code inlined from another file belongs to no kernel line
    (loop,) = cv.find_loops(asm)
    assert loop.source_lines == [41]
    asm_files = '\t.file\t1 "/x/src/streamnorm" "_kernels.py"\n\t.file\t2 "/y" "other.py"\n'
    assert cv.debug_files(asm_files, "/x/src/streamnorm/_kernels.py") == {1}


def test_aarch64_neon_and_sve_loops(cv):
    neon = ".LBB0_4:\n\tldr q0, [x8], #16\n\tadd v1.4s, v1.4s, v0.4s\n\tsubs x9, x9, #4\n\tb.ne .LBB0_4\n"
    (loop,) = cv.find_loops(neon.splitlines(), "aarch64")
    assert (loop.vectorized, loop.width, loop.packed) == (True, 128, 1)
    sve = ".LBB0_5:\n\tld1w { z0.s }, p0/z, [x0, x8, lsl #2]\n\tfadd z1.s, p0/m, z1.s, z0.s\n\tcbnz x9, .LBB0_5\n"
    (loop,) = cv.find_loops(sve.splitlines(), "aarch64")
    assert (loop.vectorized, loop.width) == (True, "SVE")
    scalar = ".LBB0_6:\n\tldrb w10, [x0], #1\n\tadd x11, x11, x10\n\tcmp x10, x12\n\tcsel x12, x10, x12, lo\n" \
             "\tsubs x9, x9, #1\n\tb.ne .LBB0_6\n"
    (loop,) = cv.find_loops(scalar.splitlines(), "aarch64")
    assert not loop.vectorized and loop.scalar == 4


def test_source_loops_find_the_deepest_innermost_loops(cv):
    src = (
        "def k(x, s):\n"
        "    for o in range(2):\n"
        "        for f in range(3):\n"
        "            while x:\n"
        "                for i in range(4):\n"
        "                    s += i\n"
        "            for j in range(5):\n"
        "                s += j\n"
        "    for j in range(6):\n"
        "        s -= j\n"
    )
    loops = cv.source_loops(src, first_line=100)
    hot = cv.hot_source_loops(loops)
    assert [(lo.first, lo.last) for lo in hot] == [(104, 105)]
    assert {(lo.first, lo.depth) for lo in loops if lo.innermost} == {(104, 3), (106, 2), (108, 0)}


# -- reading assembly: generated loop nests -----------------------------------------------------
PACKED = ["vpaddd\t%ymm1, %ymm2, %ymm2", "vpmaxub\t(%rax), %xmm3, %xmm3", "vaddpd\t%zmm0, %zmm1, %zmm1",
          "vfmadd231pd\t%ymm4, %ymm4, %ymm5", "vcvtps2pd\t(%rsi), %zmm6", "vpsadbw\t%xmm0, %xmm7, %xmm7",
          "vminpd\t%xmm1, %xmm2, %xmm2", "paddq\t%xmm1, %xmm2"]
SCALAR = ["addq\t%rax, %rbx", "imull\t%ecx, %edx", "vaddsd\t%xmm0, %xmm1, %xmm1", "cmovbl\t%eax, %ecx",
          "vmaxsd\t%xmm2, %xmm3, %xmm3", "xorb\t%dl, %r12b"]
OTHER = ["movzbl\t(%r10,%r9), %r12d", "vmovdqu\t%ymm0, (%rax)", "vpbroadcastd\t%xmm0, %ymm0",
         "vpxor\t%xmm9, %xmm9, %xmm9", "leaq\t1(%r9), %r9", "vmovupd\t(%rdi), %zmm3"]
WIDTH = {PACKED[0]: 256, PACKED[1]: 128, PACKED[2]: 512, PACKED[3]: 256, PACKED[4]: 512, PACKED[5]: 128,
         PACKED[6]: 128, PACKED[7]: 128}
ops = st.lists(st.sampled_from(PACKED + SCALAR + OTHER), max_size=6)
nests = st.recursive(st.builds(lambda body: ("loop", body, []), ops),
                     lambda inner: st.builds(lambda a, kids, b: ("loop", a, kids + [("tail", b, [])]),
                                             ops, st.lists(inner, min_size=1, max_size=3), ops),
                     max_leaves=8)


def render(nest, out: list[str], truth: list[tuple], counter: list[int]) -> None:
    kind, body, kids = nest
    if kind == "tail":
        out.extend("\t" + op for op in body)
        return
    counter[0] += 1
    label = f".LBB0_{counter[0]}"
    out.append(f"{label}:")
    out.extend("\t" + op for op in body)
    for kid in kids:
        render(kid, out, truth, counter)
    out.append("\tcmpq\t%rcx, %r8")
    out.append(f"\tjne\t{label}")
    if not kids:
        packed = [op for op in body if op in PACKED]
        scalar = sum(op in SCALAR for op in body) + 1  # the loop's compare
        truth.append((label, bool(packed), max((WIDTH[op] for op in packed), default=0), len(packed), scalar))


@settings(max_examples=150, deadline=None)
@given(prologue=ops, nests=st.lists(nests, min_size=1, max_size=3), epilogue=ops)
def test_generated_loop_nests_are_classified_as_built(cv, prologue, nests, epilogue):
    lines = ["\t" + op for op in prologue]
    truth: list[tuple] = []
    counter = [0]
    for nest in nests:
        render(nest, lines, truth, counter)
    lines += ["\t" + op for op in epilogue]
    found = [(lo.label, lo.vectorized, lo.width, lo.packed, lo.scalar)
             for lo in cv.find_loops(lines) if lo.innermost]
    assert found == truth
    assert {lo.label for lo in cv.find_loops(lines)} == {f".LBB0_{i}" for i in range(1, counter[0] + 1)}
