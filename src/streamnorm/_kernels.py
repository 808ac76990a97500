"""numba reducers: serial, ``nogil``, no Python objects inside.

Every kernel fills fresh per-call partial arrays; the caller merges partials
(across threads, batches, shards) in a fixed order. That keeps the kernels free
of shared state, makes a failed batch leave the running state untouched, and
lets Python threads run kernels in parallel without ``prange`` races.

The plane and column kernels share one signature, ``(x, xor, s, q0, q1, q2,
mn, mx)``; only the 32-bit ones use ``q1``/``q2``. The pixel kernels
(``u8_words``, ``u8_rgb``) take uint32 words and the xor in every byte.

Integer kernels see *unsigned* views: a signed batch is read through its
unsigned view and XOR-ed with the sign bit, which maps ``v`` to ``v + 2**(b-1)``
without a copy. Sums of those offsets are exact, and the caller converts them
back with exact integer arithmetic. Chunk sizes keep every narrow accumulator
from overflowing:

- 8-bit planes and words: uint32 sums over 65536 values (255**2 * 65536 < 2**32);
  RGB: 16384 groups of four pixels;
- 8-bit columns: uint16 sums over 256 rows, uint32 squares over 65536 rows;
- 16-bit: uint32 sums over 65536 values, uint64 squares (each < 2**32); the
  caller bounds values per call;
- 32-bit: ``u = h * 2**16 + l`` and ``u**2 = h*h*2**32 + h*l*2**17 + l*l``,
  three int64 sums whose terms are each < 2**32.

Float kernels accumulate in float64 about a per-feature shift ``k`` (the first
finite value seen), block by block (``FLOAT_CHUNK_BYTES``), each block merged
into the running partial by Chan's update. A block's M2 is the corrected
two-pass one (``acc - comp**2/n`` of the deviations from a centre): about the
previous blocks' mean when that lies near the block's mean (checked per
column, see :func:`float_cols`), else about the block's own mean from a first
pass, which then reads the block again from cache.
No ``fastmath``: it would fold away the non-finite checks. Chan's merge
(:func:`_chan`, also behind ``stats.chan_merge``) orders its terms so that it
overflows only where its result does.

Set ``STREAMNORM_DISABLE_JIT=1`` to run the very same functions as plain Python
(slow; for debugging and for the test that both agree).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

__all__ = ["JIT_ENABLED", "CACHE_ENABLED", "DISABLE_JIT_ENV"]

DISABLE_JIT_ENV = "STREAMNORM_DISABLE_JIT"
JIT_ENABLED = os.environ.get(DISABLE_JIT_ENV, "").strip().lower() in ("", "0", "false", "no")
CACHE_ENABLED = True

PLANE_CHUNK_8BIT = 65536
PLANE_LANES = 64
FLOAT_CHUNK_BYTES = 131072  # fits L2 for a fallback second pass; fewer merges than 32 KB
# float_cols keeps a one-pass block where comp**2/n <= GUESS_SLACK * acc
GUESS_SLACK = 0.5

POLICY_RAISE = 0
POLICY_OMIT = 1
POLICY_PROPAGATE = 2


def _jit(fn):
    """``njit(nogil=True, cache=True)``, falling back to no cache.

    numba refuses ``cache=True`` at decoration time when neither the package's
    ``__pycache__`` nor a user cache directory is writable (read-only
    site-packages in a container). Compiling without a cache is slower at
    first call but correct, so that is the fallback.
    """
    global CACHE_ENABLED
    if not JIT_ENABLED:
        return fn
    import numba

    try:
        kernel = numba.njit(nogil=True, cache=True)(fn)
        _probe_cache(kernel)
        return kernel
    except (RuntimeError, OSError) as exc:  # no writable cache locator
        if CACHE_ENABLED:
            warnings.warn(
                f"streamnorm: numba cannot cache compiled kernels ({exc}); they will be "
                f"compiled on first use in every process. Set NUMBA_CACHE_DIR to a "
                f"writable folder to avoid that.",
                RuntimeWarning,
                stacklevel=2,
            )
        CACHE_ENABLED = False
        return numba.njit(nogil=True, cache=False)(fn)


def _probe_cache(kernel) -> None:
    """Raise OSError now if ``kernel``'s cache folder cannot be written.

    Some locators (numba's for zip-imported packages) do not check their
    folder when the kernel is decorated, so the first call would fail
    (``NotADirectoryError`` when the user cache path runs through a file).
    """
    locator = getattr(getattr(getattr(kernel, "_cache", None), "_impl", None), "_locator", None)
    if locator is not None and hasattr(locator, "ensure_cache_path"):
        locator.ensure_cache_path()


# --------------------------------------------------------------------------
# integers
# --------------------------------------------------------------------------


@_jit
def u8_planes(x, xor, s, q, q1, q2, mn, mx):
    """(O, F, I) uint8 -> per-feature sum, sum of squares, min, max of ``x ^ xor``.

    Every value in the hot loop is cast back to its narrow type: numba widens
    integer arithmetic to 64 bits, which made LLVM widen each byte eight times
    (64-bit lanes) and read 32 bytes per iteration. With ``uint8`` min/max and
    ``uint32`` sums it loads 64 bytes per iteration and squares with
    ``vpmaddwd``/``vpdpwssd``. The loop starts at 0 over a sliced chunk, so no
    negative-index wraparound turns its loads into gathers.
    """
    n_outer, n_feat, n_inner = x.shape
    x8 = np.uint8(xor)
    for o in range(n_outer):
        for f in range(n_feat):
            span = x[o, f]
            lo = np.uint8(mn[f]) if mn[f] < 255 else np.uint8(255)
            hi = np.uint8(mx[f]) if mx[f] > 0 else np.uint8(0)
            ss = np.int64(0)
            qq = np.int64(0)
            i0 = 0
            while i0 < n_inner:
                i1 = min(n_inner, i0 + PLANE_CHUNK_8BIT)
                chunk = span[i0:i1]
                a = np.uint32(0)
                b = np.uint32(0)
                for i in range(chunk.shape[0]):
                    v = np.uint8(chunk[i] ^ x8)
                    w = np.uint32(v)
                    a = np.uint32(a + w)
                    b = np.uint32(b + w * w)
                    lo = min(lo, v)
                    hi = max(hi, v)
                ss += np.int64(a)
                qq += np.int64(b)
                i0 = i1
            s[f] += ss
            q[f] += qq
            mn[f] = np.int64(lo)
            mx[f] = np.int64(hi)


@_jit
def u8_cols(x, xor, s, q, q1, q2, mn, mx):
    """(R, W) uint8 -> per-column sum, sum of squares, min, max of ``x ^ xor``."""
    n_rows, width = x.shape
    bs = np.zeros(width, np.uint16)
    bq = np.zeros(width, np.uint32)
    lo = np.full(width, 255, np.uint8)
    hi = np.zeros(width, np.uint8)
    r0 = 0
    blocks = 0
    while r0 < n_rows:
        r1 = min(n_rows, r0 + 256)
        for r in range(r0, r1):
            for j in range(width):
                v = np.uint8(x[r, j] ^ xor)
                w = np.uint16(v)
                bs[j] += w
                bq[j] += np.uint32(w * w)
                lo[j] = v if v < lo[j] else lo[j]
                hi[j] = v if v > hi[j] else hi[j]
        for j in range(width):
            s[j] += np.int64(bs[j])
            bs[j] = 0
        blocks += 1
        r0 = r1
        if blocks == 256 or r0 >= n_rows:
            for j in range(width):
                q[j] += np.int64(bq[j])
                bq[j] = 0
            blocks = 0
    for j in range(width):
        if np.int64(lo[j]) < mn[j]:
            mn[j] = lo[j]
        if np.int64(hi[j]) > mx[j]:
            mx[j] = hi[j]


# Pixels of 1, 2, 3 or 4 interleaved 8-bit channels (NHWC images): read as
# uint32 words, a channel is a byte position, taken out with a shift and a
# mask in 32-bit lanes. The loops are plain reductions into registers, with
# no per-column partials to load and store for every value (u8_cols' bound).

@_jit
def u8_words(w, x32, s, q, mn, mx):
    """1-D uint32 words -> per byte position (4) sum, sum of squares, min, max of ``byte ^ xor``.

    ``x32`` is the 8-bit xor repeated in every byte. Position ``b`` holds
    channel ``b % F`` of ``F`` = 1, 2 or 4 interleaved channels: the caller
    folds positions into channels.
    """
    n = w.shape[0]
    m8 = np.uint32(255)
    s8 = np.uint32(8)
    s16 = np.uint32(16)
    s24 = np.uint32(24)
    l0 = np.uint32(255)
    l1 = np.uint32(255)
    l2 = np.uint32(255)
    l3 = np.uint32(255)
    h0 = np.uint32(0)
    h1 = np.uint32(0)
    h2 = np.uint32(0)
    h3 = np.uint32(0)
    i0 = 0
    while i0 < n:
        i1 = min(n, i0 + PLANE_CHUNK_8BIT)  # uint32 sums of <= 65536 values < 2**32
        chunk = w[i0:i1]
        a0 = np.uint32(0)
        a1 = np.uint32(0)
        a2 = np.uint32(0)
        a3 = np.uint32(0)
        b0 = np.uint32(0)
        b1 = np.uint32(0)
        b2 = np.uint32(0)
        b3 = np.uint32(0)
        for i in range(chunk.shape[0]):
            u = np.uint32(chunk[i] ^ x32)
            v0 = np.uint32(u & m8)
            v1 = np.uint32((u >> s8) & m8)
            v2 = np.uint32((u >> s16) & m8)
            v3 = np.uint32(u >> s24)
            a0 = np.uint32(a0 + v0)
            a1 = np.uint32(a1 + v1)
            a2 = np.uint32(a2 + v2)
            a3 = np.uint32(a3 + v3)
            b0 = np.uint32(b0 + np.uint32(v0 * v0))
            b1 = np.uint32(b1 + np.uint32(v1 * v1))
            b2 = np.uint32(b2 + np.uint32(v2 * v2))
            b3 = np.uint32(b3 + np.uint32(v3 * v3))
            l0 = min(l0, v0)
            l1 = min(l1, v1)
            l2 = min(l2, v2)
            l3 = min(l3, v3)
            h0 = max(h0, v0)
            h1 = max(h1, v1)
            h2 = max(h2, v2)
            h3 = max(h3, v3)
        s[0] += np.int64(a0)
        s[1] += np.int64(a1)
        s[2] += np.int64(a2)
        s[3] += np.int64(a3)
        q[0] += np.int64(b0)
        q[1] += np.int64(b1)
        q[2] += np.int64(b2)
        q[3] += np.int64(b3)
        i0 = i1
    mn[0], mn[1], mn[2], mn[3] = l0, l1, l2, l3
    mx[0], mx[1], mx[2], mx[3] = h0, h1, h2, h3


@_jit
def _rgb_sum(a, b, c, d):
    return np.uint32(np.uint32(a + b) + np.uint32(c + d))


@_jit
def _rgb_sq(a, b, c, d):
    return np.uint32(np.uint32(np.uint32(a * a) + np.uint32(b * b)) + np.uint32(np.uint32(c * c) + np.uint32(d * d)))


@_jit
def u8_rgb(w, x32, s, q, mn, mx):
    """1-D uint32 words of RGB pixels -> per channel (3) sum, sum of squares, min, max of ``byte ^ xor``.

    Three words hold four pixels, ``RGBR GBRG BRGB`` (bytes in memory order),
    so each channel is four fixed byte positions of every three words.
    """
    n = w.shape[0] // 3
    m8 = np.uint32(255)
    s8 = np.uint32(8)
    s16 = np.uint32(16)
    s24 = np.uint32(24)
    lr = np.uint32(255)
    lg = np.uint32(255)
    lb = np.uint32(255)
    hr = np.uint32(0)
    hg = np.uint32(0)
    hb = np.uint32(0)
    g0 = 0
    while g0 < n:
        g1 = min(n, g0 + 16384)  # 4 squares a group: 16384 groups keep uint32 sums < 2**32
        chunk = w[3 * g0 : 3 * g1]
        ar = np.uint32(0)
        ag = np.uint32(0)
        ab = np.uint32(0)
        br = np.uint32(0)
        bg = np.uint32(0)
        bb = np.uint32(0)
        for g in range(g1 - g0):
            u = np.uint32(chunk[3 * g] ^ x32)
            v = np.uint32(chunk[3 * g + 1] ^ x32)
            t = np.uint32(chunk[3 * g + 2] ^ x32)
            r0 = np.uint32(u & m8)
            r1 = np.uint32(u >> s24)
            r2 = np.uint32((v >> s16) & m8)
            r3 = np.uint32((t >> s8) & m8)
            g0_ = np.uint32((u >> s8) & m8)
            g1_ = np.uint32(v & m8)
            g2_ = np.uint32(v >> s24)
            g3_ = np.uint32((t >> s16) & m8)
            c0 = np.uint32((u >> s16) & m8)
            c1 = np.uint32((v >> s8) & m8)
            c2 = np.uint32(t & m8)
            c3 = np.uint32(t >> s24)
            ar = np.uint32(ar + _rgb_sum(r0, r1, r2, r3))
            ag = np.uint32(ag + _rgb_sum(g0_, g1_, g2_, g3_))
            ab = np.uint32(ab + _rgb_sum(c0, c1, c2, c3))
            br = np.uint32(br + _rgb_sq(r0, r1, r2, r3))
            bg = np.uint32(bg + _rgb_sq(g0_, g1_, g2_, g3_))
            bb = np.uint32(bb + _rgb_sq(c0, c1, c2, c3))
            lr = min(lr, min(min(r0, r1), min(r2, r3)))
            lg = min(lg, min(min(g0_, g1_), min(g2_, g3_)))
            lb = min(lb, min(min(c0, c1), min(c2, c3)))
            hr = max(hr, max(max(r0, r1), max(r2, r3)))
            hg = max(hg, max(max(g0_, g1_), max(g2_, g3_)))
            hb = max(hb, max(max(c0, c1), max(c2, c3)))
        s[0] += np.int64(ar)
        s[1] += np.int64(ag)
        s[2] += np.int64(ab)
        q[0] += np.int64(br)
        q[1] += np.int64(bg)
        q[2] += np.int64(bb)
        g0 = g1
    mn[0], mn[1], mn[2] = lr, lg, lb
    mx[0], mx[1], mx[2] = hr, hg, hb


@_jit
def u8_hist_planes(x, xor, hist):
    """(O, F, I) uint8 -> hist[f, x ^ xor] += 1."""
    n_outer, n_feat, n_inner = x.shape
    for o in range(n_outer):
        for f in range(n_feat):
            span = x[o, f, :]
            for i in range(span.shape[0]):
                hist[f, span[i] ^ xor] += 1


@_jit
def u8_hist_cols(x, xor, hist):
    """(R, F) uint8 -> hist[f, x ^ xor] += 1."""
    n_rows, n_feat = x.shape
    for r in range(n_rows):
        for f in range(n_feat):
            hist[f, x[r, f] ^ xor] += 1


@_jit
def u16_planes(x, xor, s, q, q1, q2, mn, mx):
    """(O, F, I) uint16 -> sum, sum of squares (each square < 2**32), min, max.

    Narrow types as in :func:`u8_planes`: ``uint16`` min/max, ``uint32`` sums
    over chunks of 65536 values, ``uint64`` squares (32x32->64 multiplies).
    """
    n_outer, n_feat, n_inner = x.shape
    x16 = np.uint16(xor)
    for o in range(n_outer):
        for f in range(n_feat):
            span = x[o, f]
            lo = np.uint16(mn[f]) if mn[f] < 65535 else np.uint16(65535)
            hi = np.uint16(mx[f]) if mx[f] > 0 else np.uint16(0)
            ss = np.int64(0)
            qq = np.int64(0)
            i0 = 0
            while i0 < n_inner:
                i1 = min(n_inner, i0 + 65536)
                chunk = span[i0:i1]
                a = np.uint32(0)
                b = np.uint64(0)
                for i in range(chunk.shape[0]):
                    v = np.uint16(chunk[i] ^ x16)
                    w = np.uint32(v)
                    a = np.uint32(a + w)
                    b = np.uint64(b + np.uint64(w * w))
                    lo = min(lo, v)
                    hi = max(hi, v)
                ss += np.int64(a)
                qq += np.int64(b)
                i0 = i1
            s[f] += ss
            q[f] += qq
            mn[f] = np.int64(lo)
            mx[f] = np.int64(hi)


@_jit
def u16_cols(x, xor, s, q, q1, q2, mn, mx):
    """(R, W) uint16 -> per-column sum, sum of squares, min, max of ``x ^ xor``.

    Four rows at a time: the per-column partials (``uint32`` sums over blocks
    of 65536 rows, ``uint64`` squares, ``uint16`` min/max) are loaded and
    stored once per four rows, which bounded the one-row loop. Keep ``W`` at
    most a few hundred: at 256 columns, rows 512 bytes apart and the partials
    collide in the cache (4K aliasing) and the loop runs at half speed.
    """
    n_rows, width = x.shape
    x16 = np.uint16(xor)
    bs = np.zeros(width, np.uint32)
    bq = np.zeros(width, np.uint64)
    lo = np.full(width, 65535, np.uint16)
    hi = np.zeros(width, np.uint16)
    r0 = 0
    while r0 < n_rows:
        r1 = min(n_rows, r0 + 65536)
        r = r0
        while r + 4 <= r1:
            a0 = x[r]
            a1 = x[r + 1]
            a2 = x[r + 2]
            a3 = x[r + 3]
            for j in range(width):
                v0 = np.uint16(a0[j] ^ x16)
                v1 = np.uint16(a1[j] ^ x16)
                v2 = np.uint16(a2[j] ^ x16)
                v3 = np.uint16(a3[j] ^ x16)
                w0 = np.uint32(v0)
                w1 = np.uint32(v1)
                w2 = np.uint32(v2)
                w3 = np.uint32(v3)
                bs[j] = np.uint32(bs[j] + np.uint32(np.uint32(w0 + w1) + np.uint32(w2 + w3)))
                bq[j] = bq[j] + ((np.uint64(w0 * w0) + np.uint64(w1 * w1))
                                 + (np.uint64(w2 * w2) + np.uint64(w3 * w3)))
                lo[j] = min(lo[j], min(min(v0, v1), min(v2, v3)))
                hi[j] = max(hi[j], max(max(v0, v1), max(v2, v3)))
            r += 4
        while r < r1:
            a0 = x[r]
            for j in range(width):
                v0 = np.uint16(a0[j] ^ x16)
                w0 = np.uint32(v0)
                bs[j] = np.uint32(bs[j] + w0)
                bq[j] = bq[j] + np.uint64(w0 * w0)
                lo[j] = min(lo[j], v0)
                hi[j] = max(hi[j], v0)
            r += 1
        for j in range(width):
            s[j] += np.int64(bs[j])
            q[j] += np.int64(bq[j])
            bs[j] = 0
            bq[j] = 0
        r0 = r1
    for j in range(width):
        if np.int64(lo[j]) < mn[j]:
            mn[j] = lo[j]
        if np.int64(hi[j]) > mx[j]:
            mx[j] = hi[j]


@_jit
def u32_planes(x, xor, s, qhh, qhl, qll, mn, mx):
    """(O, F, I) uint32 -> sum and the three split-square sums, min, max."""
    n_outer, n_feat, n_inner = x.shape
    for o in range(n_outer):
        for f in range(n_feat):
            lo = mn[f]
            hi = mx[f]
            a = np.int64(0)
            b0 = np.int64(0)
            b1 = np.int64(0)
            b2 = np.int64(0)
            span = x[o, f, :]
            for i in range(span.shape[0]):
                v = np.int64(span[i] ^ xor)
                h = v >> 16
                low = v & 0xFFFF
                a += v
                b0 += h * h
                b1 += h * low
                b2 += low * low
                lo = v if v < lo else lo
                hi = v if v > hi else hi
            s[f] += a
            qhh[f] += b0
            qhl[f] += b1
            qll[f] += b2
            mn[f] = lo
            mx[f] = hi


@_jit
def u32_cols(x, xor, s, qhh, qhl, qll, mn, mx):
    """(R, W) uint32 -> per-column sum and split-square sums, min, max."""
    n_rows, width = x.shape
    for r in range(n_rows):
        for j in range(width):
            v = np.int64(x[r, j] ^ xor)
            h = v >> 16
            low = v & 0xFFFF
            s[j] += v
            qhh[j] += h * h
            qhl[j] += h * low
            qll[j] += low * low
            mn[j] = v if v < mn[j] else mn[j]
            mx[j] = v if v > mx[j] else mx[j]


# --------------------------------------------------------------------------
# floats
# --------------------------------------------------------------------------


@_jit
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    if n_a == 0.0:
        return n_b, mean_b, m2_b
    # Half differences, the mean moved from the side holding more values, the
    # cross term ordered so it overflows only where its value does; a
    # non-finite mean gives numpy's sum of the means and a NaN M2.
    n = n_a + n_b
    if not (np.isfinite(mean_a) and np.isfinite(mean_b)):
        return n, mean_a + mean_b, np.nan
    frac_b = n_b / n
    half = mean_b * 0.5 - mean_a * 0.5
    if frac_b <= 0.5:
        mean = mean_a + (half * frac_b) * 2.0
    else:
        mean = mean_b - (half * (n_a / n)) * 2.0
    return n, mean, m2_a + m2_b + ((half * (n_a * frac_b)) * half) * 4.0


@_jit
def chan_arrays(n_a, mean_a, m2_a, n_b, mean_b, m2_b, n, mean, m2):
    """Elementwise :func:`_chan` of two 1-D sets of moments into ``n, mean, m2``."""
    for i in range(n.shape[0]):
        n[i], mean[i], m2[i] = _chan(n_a[i], mean_a[i], m2_a[i], n_b[i], mean_b[i], m2_b[i])


@_jit
def _corrected_m2(acc, comp, n):
    """Two-pass M2 ``acc - comp**2/n``; ``comp**2/n <= acc``, so an infinite ``acc`` stays inf."""
    if acc == np.inf:
        return acc  # the correction may overflow too, and inf - inf is NaN
    return acc - comp * (comp / n)


@_jit
def _centred_mean(centre, k, comp, n):
    """The mean about ``k`` from the M2 pass about ``centre``: ``(centre - k) + comp / n``.

    The M2 pass takes ``d = x - centre`` with ``centre = k + mean``, rounded
    once: one subtraction a value instead of two. The rounding moves every
    ``d`` by the same amount, which the corrected M2 (``acc - comp**2/n``)
    removes and the mean gets back here. ``centre - k`` is exact or nearly
    (the two are close), and ``comp / n`` corrects the first pass's mean.
    """
    return (centre - k) + comp / n


@_jit
def _merge_range(lo, hi, new_lo, new_hi):
    """Merge two (min, max) ranges; a NaN on either side (propagate) wins."""
    if np.isnan(new_lo) or np.isnan(lo):
        return np.nan, np.nan
    return min(lo, new_lo), max(hi, new_hi)


@_jit
def _careful_span(v, k, policy):
    """Moments of one strided 1-D span about ``k``, checking every value.

    Returns ``(n, n_nonfinite, mean, m2, lo, hi, bad)``; ``bad`` is 1 when a
    non-finite value was met under the raise policy.
    """
    n = 0
    nonfinite = 0
    total = 0.0
    lo = np.inf
    hi = -np.inf
    saw_nan = False
    for i in range(v.shape[0]):
        y = np.float64(v[i])
        if not np.isfinite(y):
            nonfinite += 1
            if policy == POLICY_RAISE:
                return 0.0, nonfinite, 0.0, 0.0, lo, hi, 1
            if policy == POLICY_OMIT:
                continue
            if np.isnan(y):
                saw_nan = True
        n += 1
        total += y - k
        if y < lo:
            lo = y
        if y > hi:
            hi = y
    if n == 0:
        return 0.0, nonfinite, 0.0, 0.0, lo, hi, 0
    centre = k + total / n
    acc = 0.0
    comp = 0.0
    for i in range(v.shape[0]):
        y = np.float64(v[i])
        if policy == POLICY_OMIT and not np.isfinite(y):
            continue
        d = y - centre
        acc += d * d
        comp += d
    if saw_nan:
        lo = np.nan
        hi = np.nan
    return float(n), nonfinite, _centred_mean(centre, k, comp, n), _corrected_m2(acc, comp, n), lo, hi, 0


@_jit
def float_cols(x, k, n, nonfinite, mean, m2, mn, mx, policy):
    """(R, W) float -> per-column moments about ``k[j]``, row blocks of ~32 KB.

    Each block is first reduced in one pass about a guessed centre: the
    previous blocks' means, extrapolated one block ahead (so a column that
    drifts, such as a sorted one, stays centred), or ``k`` for the first.
    The corrected M2 ``acc - comp**2/n`` of that pass is as accurate as the
    two-pass one whenever the guess lies near the block's mean; the pass is
    kept only where ``comp**2/n <= GUESS_SLACK * acc`` in every column (at
    most one bit lost to the subtraction). Otherwise, and on any non-finite
    value, the block is reduced again by the classic two passes (mean, then
    M2 about it). Stationary data take one pass: half the arithmetic.

    Four rows at a time: the per-column partials (sums in float64, min and
    max in the input's own dtype, where they are exact) are loaded and stored
    once per four rows; one row at a time, those loads and stores, not the
    arithmetic, bounded the loop.

    The partial arrays are running state: blocks are merged into them with
    Chan's update. Returns -1, or the first column with a non-finite value
    under the raise policy (the partials are then unusable).
    """
    n_rows, width = x.shape
    block = max(8, FLOAT_CHUNK_BYTES // max(1, width * x.itemsize))
    total = np.empty(width)
    centre = np.empty(width)
    guess = np.empty(width)
    last = np.empty(width)
    acc = np.empty(width)
    comp = np.empty(width)
    lo = np.empty_like(x[0])
    hi = np.empty_like(x[0])
    for j in range(width):
        guess[j] = k[j] + mean[j] if n[j] > 0 else k[j]
        last[j] = guess[j]
    r0 = 0
    while r0 < n_rows:
        r1 = min(n_rows, r0 + block)
        rows = x[r0:r1]
        nb = r1 - r0
        first = rows[0]
        for j in range(width):
            acc[j] = 0.0
            comp[j] = 0.0
            lo[j] = first[j]
            hi[j] = first[j]
        r = 0
        while r + 4 <= nb:
            a0 = rows[r]
            a1 = rows[r + 1]
            a2 = rows[r + 2]
            a3 = rows[r + 3]
            for j in range(width):
                g = guess[j]
                y0 = a0[j]
                y1 = a1[j]
                y2 = a2[j]
                y3 = a3[j]
                d0 = np.float64(y0) - g
                d1 = np.float64(y1) - g
                d2 = np.float64(y2) - g
                d3 = np.float64(y3) - g
                acc[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                comp[j] += (d0 + d1) + (d2 + d3)
                m01 = y0 if y0 < y1 else y1
                m23 = y2 if y2 < y3 else y3
                m = m01 if m01 < m23 else m23
                lo[j] = m if m < lo[j] else lo[j]
                h01 = y0 if y0 > y1 else y1
                h23 = y2 if y2 > y3 else y3
                h = h01 if h01 > h23 else h23
                hi[j] = h if h > hi[j] else hi[j]
            r += 4
        while r < nb:
            a0 = rows[r]
            for j in range(width):
                y0 = a0[j]
                d = np.float64(y0) - guess[j]
                acc[j] += d * d
                comp[j] += d
                lo[j] = y0 if y0 < lo[j] else lo[j]
                hi[j] = y0 if y0 > hi[j] else hi[j]
            r += 1
        kept = True
        for j in range(width):
            # False on NaN or inf too (of the data, or of an overflowing square)
            if not (comp[j] * (comp[j] / nb) <= GUESS_SLACK * acc[j] and acc[j] < np.inf):
                kept = False
        if kept:
            for j in range(width):
                centre[j] = guess[j]
        else:
            for j in range(width):
                total[j] = 0.0
            r = 0
            while r + 4 <= nb:
                a0 = rows[r]
                a1 = rows[r + 1]
                a2 = rows[r + 2]
                a3 = rows[r + 3]
                for j in range(width):
                    c = k[j]
                    total[j] += (((np.float64(a0[j]) - c) + (np.float64(a1[j]) - c))
                                 + ((np.float64(a2[j]) - c) + (np.float64(a3[j]) - c)))
                r += 4
            while r < nb:
                a0 = rows[r]
                for j in range(width):
                    total[j] += np.float64(a0[j]) - k[j]
                r += 1
            finite = True
            for j in range(width):
                total[j] = total[j] / nb
                centre[j] = k[j] + total[j]
                acc[j] = 0.0
                comp[j] = 0.0
                if not np.isfinite(total[j]):
                    finite = False
            if not finite:
                for j in range(width):
                    cn, bad_n, cm, cm2, clo, chi, bad = _careful_span(rows[:, j], k[j], policy)
                    nonfinite[j] += bad_n
                    if bad == 1:
                        return j
                    n[j], mean[j], m2[j] = _chan(n[j], mean[j], m2[j], cn, cm, cm2)
                    mn[j], mx[j] = _merge_range(mn[j], mx[j], clo, chi)
                r0 = r1
                continue
            r = 0
            while r + 4 <= nb:
                a0 = rows[r]
                a1 = rows[r + 1]
                a2 = rows[r + 2]
                a3 = rows[r + 3]
                for j in range(width):
                    ct = centre[j]
                    d0 = np.float64(a0[j]) - ct
                    d1 = np.float64(a1[j]) - ct
                    d2 = np.float64(a2[j]) - ct
                    d3 = np.float64(a3[j]) - ct
                    acc[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                    comp[j] += (d0 + d1) + (d2 + d3)
                r += 4
            while r < nb:
                a0 = rows[r]
                for j in range(width):
                    d = np.float64(a0[j]) - centre[j]
                    acc[j] += d * d
                    comp[j] += d
                r += 1
        for j in range(width):
            cm2 = _corrected_m2(acc[j], comp[j], nb)
            cm = _centred_mean(centre[j], k[j], comp[j], nb)
            n[j], mean[j], m2[j] = _chan(n[j], mean[j], m2[j], float(nb), cm, cm2)
            v = np.float64(lo[j])
            mn[j] = v if v < mn[j] else mn[j]  # a NaN already in mn (propagate) stays
            v = np.float64(hi[j])
            mx[j] = v if v > mx[j] else mx[j]
            now = k[j] + cm
            # one block ahead from the second block on: a drifting column stays centred
            guess[j] = now + (now - last[j]) if r0 > 0 else now
            last[j] = now
        r0 = r1
    return -1


@_jit
def float_planes(x, k, n, nonfinite, mean, m2, mn, mx, policy):
    """(O, F, I) float -> per-feature moments about ``k[f]``.

    Each contiguous span ``x[o, f, :]`` is reduced as rows of ``PLANE_LANES``
    lanes by :func:`float_cols` (vertical sums vectorize without the
    reassociation a serial float sum would need), its lanes are merged into
    one partial per span, and the spans' partials are merged as a binary
    cascade (pairwise, like pairwise summation): merging millions of spans
    one after the other into a running total would let rounding grow with
    their number. Returns -1 or the failing feature.
    """
    n_outer, n_feat, n_inner = x.shape
    lanes = PLANE_LANES
    main = (n_inner // lanes) * lanes
    ln = np.empty(lanes)
    lnf = np.zeros(lanes, np.int64)
    lm = np.empty(lanes)
    lm2 = np.empty(lanes)
    llo = np.empty(lanes)
    lhi = np.empty(lanes)
    lk = np.empty(lanes)
    depth = 64
    cn = np.zeros((n_feat, depth))
    cmean = np.zeros((n_feat, depth))
    cm2 = np.zeros((n_feat, depth))
    used = np.zeros((n_feat, depth), np.uint8)
    for o in range(n_outer):
        for f in range(n_feat):
            span = x[o, f, :]
            sn = 0.0
            smean = 0.0
            sm2 = 0.0
            if main > 0:
                for j in range(lanes):
                    ln[j] = 0.0
                    lnf[j] = 0
                    lm[j] = 0.0
                    lm2[j] = 0.0
                    llo[j] = np.inf
                    lhi[j] = -np.inf
                    lk[j] = k[f]
                bad = float_cols(span[:main].reshape(main // lanes, lanes), lk,
                                 ln, lnf, lm, lm2, llo, lhi, policy)
                if bad >= 0:
                    return f
                for j in range(lanes):
                    sn, smean, sm2 = _chan(sn, smean, sm2, ln[j], lm[j], lm2[j])
                    nonfinite[f] += lnf[j]
                    mn[f], mx[f] = _merge_range(mn[f], mx[f], llo[j], lhi[j])
            if main < n_inner:
                tn, bad_n, tm, tm2, clo, chi, bad = _careful_span(span[main:], k[f], policy)
                nonfinite[f] += bad_n
                if bad == 1:
                    return f
                sn, smean, sm2 = _chan(sn, smean, sm2, tn, tm, tm2)
                mn[f], mx[f] = _merge_range(mn[f], mx[f], clo, chi)
            level = 0
            while used[f, level] == 1:  # binary carry: merge equal-rank partials
                sn, smean, sm2 = _chan(cn[f, level], cmean[f, level], cm2[f, level], sn, smean, sm2)
                used[f, level] = 0
                level += 1
            cn[f, level] = sn
            cmean[f, level] = smean
            cm2[f, level] = sm2
            used[f, level] = 1
    for f in range(n_feat):
        tn = 0.0
        tm = 0.0
        tm2 = 0.0
        for level in range(depth):
            if used[f, level] == 1:  # older (larger) partials come first
                tn, tm, tm2 = _chan(cn[f, level], cmean[f, level], cm2[f, level], tn, tm, tm2)
        n[f], mean[f], m2[f] = _chan(n[f], mean[f], m2[f], tn, tm, tm2)
    return -1


@_jit
def first_finite(x, k, has):
    """Set ``k[f]`` to the first finite value of feature ``f`` where ``has[f]`` is 0."""
    n_outer, n_feat, n_inner = x.shape
    for f in range(n_feat):
        if has[f]:
            continue
        found = False
        for o in range(n_outer):
            for i in range(n_inner):
                y = np.float64(x[o, f, i])
                if np.isfinite(y):
                    k[f] = y
                    has[f] = 1
                    found = True
                    break
            if found:
                break


@_jit
def fold_float_lanes(n, nonfinite, mean, m2, mn, mx, n_feat):
    """Merge lanes ``j`` of a grouped (R, k*F) reduction into features ``j % F``."""
    width = n.shape[0]
    on = np.zeros(n_feat)
    onf = np.zeros(n_feat, np.int64)
    om = np.zeros(n_feat)
    om2 = np.zeros(n_feat)
    olo = np.full(n_feat, np.inf)
    ohi = np.full(n_feat, -np.inf)
    for j in range(width):
        f = j % n_feat
        on[f], om[f], om2[f] = _chan(on[f], om[f], om2[f], n[j], mean[j], m2[j])
        onf[f] += nonfinite[j]
        olo[f], ohi[f] = _merge_range(olo[f], ohi[f], mn[j], mx[j])
    return on, onf, om, om2, olo, ohi


# --------------------------------------------------------------------------
# distributions: sparse counts on a grid fixed in advance
# --------------------------------------------------------------------------
#
# Every value maps to an int64 key whose order is the values' order; a
# distribution is, per feature, the sorted occupied keys and their counts.
# Counts are integers, so merging (adding) them is exact in any order.

KEY_SKIP = np.iinfo(np.int64).min  # a value that does not enter (NaN; inf under omit)
SUBNORMAL_KEYS = np.int64(1) << np.int64(52)  # |bits| below this: zero or subnormal
ABS_MASK = np.int64(0x7FFFFFFFFFFFFFFF)
INF_BITS = np.int64(0x7FF0000000000000)
DENSE_WINDOW = 1024  # a feature's keys are counted in a dense window up to this range + 4 per value
TINY = 2.0 ** -1022  # the smallest normal float64


KEY_VALUE = 0  # exact: the integer value is its key
KEY_F64 = 1  # log grid, from float64 bits (an int64 view)
KEY_F32 = 2  # log grid, from float32 bits (an int32 view), as the float64 of the same value


@_jit
def _f32_as_f64_magnitude(a):
    """float64 bits of |v| for the float32 whose bits without sign are ``a`` (exact)."""
    if a >= 0x7F800000:  # inf, or NaN (any NaN pattern of float64)
        return INF_BITS if a == 0x7F800000 else INF_BITS + 1
    if a >= 0x00800000:  # normal: rebias the exponent (1023 - 127), widen the mantissa
        return (a << 29) + (np.int64(896) << 52)
    if a == 0:
        return np.int64(0)
    p = 22  # float32 subnormal a * 2**-149: normal in float64, leading bit at 2**p
    while (a >> p) == 0:
        p -= 1
    return (np.int64(p - 149 + 1023) << 52) + ((a - (np.int64(1) << p)) << (52 - p))


@_jit
def _key(x, mode, drop, keep_inf):
    """The key of one value (KEY_SKIP for NaN, and for inf unless ``keep_inf``)."""
    if mode == KEY_VALUE:
        return np.int64(x)
    if mode == KEY_F64:
        b = np.int64(x)
        neg = b < 0
        a = b & ABS_MASK
    else:
        b = np.int64(np.int32(x))
        neg = b < 0
        a = _f32_as_f64_magnitude(b & 0x7FFFFFFF)
    if a > INF_BITS or (a == INF_BITS and not keep_inf):
        return KEY_SKIP
    mag = a if a < SUBNORMAL_KEYS else SUBNORMAL_KEYS + ((a - SUBNORMAL_KEYS) >> drop)
    return -mag if neg else mag


@_jit
def grid_keys_of(bits, drop):
    """Keys of float64 values given as an int64 view (infinities kept)."""
    out = np.empty(bits.shape[0], np.int64)
    for j in range(bits.shape[0]):
        out[j] = _key(bits[j], KEY_F64, drop, True)
    return out


@_jit
def _float_key(v, drop):
    """The grid key of a float64 value, from frexp (exact; used once per feature)."""
    a = abs(v)
    if a == 0.0:
        mag = np.int64(0)
    elif a == np.inf:
        mag = SUBNORMAL_KEYS + ((INF_BITS - SUBNORMAL_KEYS) >> drop)
    elif a < 2.0 ** -1022:  # subnormal: its bits are its multiple of 2**-1074
        mag = np.int64(a * 2.0 ** 537 * 2.0 ** 537)
    else:
        m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
        bits = (np.int64(e + 1022) << 52) + np.int64((2.0 * m - 1.0) * 2.0 ** 52)
        mag = SUBNORMAL_KEYS + ((bits - SUBNORMAL_KEYS) >> drop)
    return -mag if v < 0 else mag


@_jit
def _side(v, mode):
    """0: negative normal, 1: positive normal (every exact value), 2: zero or subnormal."""
    if mode == KEY_VALUE or v >= TINY:
        return 1
    return 0 if v <= -TINY else 2


@_jit
def _value_ranges(vals, mode, keep_inf, lo, hi, n):
    """Per-feature min, max and count of the entering values on each side (see :func:`_side`)."""
    n_outer, n_feat, n_inner = vals.shape
    for o in range(n_outer):
        for f in range(n_feat):
            for i in range(n_inner):
                v = np.float64(vals[o, f, i])
                if v == v and (keep_inf or abs(v) != np.inf):
                    side = _side(v, mode)
                    n[side, f] += 1
                    lo[side, f] = min(lo[side, f], v)
                    hi[side, f] = max(hi[side, f], v)


@_jit
def _emit_sorted(kept, t, out_k, out_c, pos):
    """Run-length ``kept[:t]`` (sorted here) into out_k/out_c from ``pos``; the new pos."""
    if t == 0:
        return pos
    part = kept[:t]
    part.sort()
    out_k[pos] = part[0]
    out_c[pos] = 1
    for j in range(1, t):
        if part[j] == out_k[pos]:
            out_c[pos] += 1
        else:
            pos += 1
            out_k[pos] = part[j]
            out_c[pos] = 1
    return pos + 1


@_jit
def dist_counts(x, vals, mode, drop, keep_inf):
    """(O, F, I) values -> (offsets[F+1], sorted distinct keys, counts) per feature.

    ``vals`` holds the values, ``x`` the same memory as read for keys
    (``mode``: KEY_VALUE, KEY_F64 on an int64 view, KEY_F32 on an int32 view).
    A first pass finds each feature's value range on each side of zero (keys
    are monotone in the value, so key ranges follow, without the gap that the
    exact subnormal keys leave between the signs); narrow key ranges are
    counted in dense windows in a second pass in memory order; zeros and
    subnormals, and features with a wide range, are gathered and sorted.
    Counts are exact integers.
    """
    n_outer, n_feat, n_inner = x.shape
    vlo = np.full((3, n_feat), np.inf)
    vhi = np.full((3, n_feat), -np.inf)
    n = np.zeros((3, n_feat), np.int64)
    _value_ranges(vals, mode, keep_inf, vlo, vhi, n)
    klo = np.zeros((2, n_feat), np.int64)
    start = np.zeros(2 * n_feat + 1, np.int64)
    dense = np.ones(n_feat, np.bool_)
    for f in range(n_feat):
        for side in range(2):
            if n[side, f] > 0:
                a = np.int64(vlo[side, f]) if mode == KEY_VALUE else _float_key(vlo[side, f], drop)
                b = np.int64(vhi[side, f]) if mode == KEY_VALUE else _float_key(vhi[side, f], drop)
                klo[side, f] = a
                if b - a + 1 > DENSE_WINDOW + 4 * n[side, f]:
                    dense[f] = False
    for f in range(n_feat):
        for side in range(2):
            span = 0
            if dense[f] and n[side, f] > 0:
                hi_key = np.int64(vhi[side, f]) if mode == KEY_VALUE else _float_key(vhi[side, f], drop)
                span = hi_key - klo[side, f] + 1
            start[2 * f + side + 1] = start[2 * f + side] + span
    window = np.zeros(start[2 * n_feat], np.int64)
    small_at = np.zeros(n_feat + 1, np.int64)
    for f in range(n_feat):
        small_at[f + 1] = small_at[f] + (n[2, f] if dense[f] else n[0, f] + n[1, f] + n[2, f])
    small = np.empty(small_at[n_feat], np.int64)
    filled = small_at[:n_feat].copy()
    for o in range(n_outer):
        for f in range(n_feat):
            for i in range(n_inner):
                k = _key(x[o, f, i], mode, drop, keep_inf)
                if k == KEY_SKIP:
                    continue
                if dense[f] and (mode == KEY_VALUE or k >= SUBNORMAL_KEYS):
                    window[start[2 * f + 1] + k - klo[1, f]] += 1
                elif dense[f] and k <= -SUBNORMAL_KEYS:
                    window[start[2 * f] + k - klo[0, f]] += 1
                else:
                    small[filled[f]] = k
                    filled[f] += 1
    size = small.shape[0]
    for j in range(window.shape[0]):
        size += window[j] != 0
    offsets = np.zeros(n_feat + 1, np.int64)
    out_k = np.empty(size, np.int64)
    out_c = np.empty(size, np.int64)
    pos = 0
    for f in range(n_feat):
        for side in (0, 2, 1):  # ascending keys: negatives, zero and subnormals, positives
            if side == 2:
                pos = _emit_sorted(small[small_at[f]:small_at[f + 1]], filled[f] - small_at[f],
                                   out_k, out_c, pos)
                continue
            for j in range(start[2 * f + side], start[2 * f + side + 1]):
                if window[j] != 0:
                    out_k[pos] = klo[side, f] + (j - start[2 * f + side])
                    out_c[pos] = window[j]
                    pos += 1
        offsets[f + 1] = pos
    return offsets, out_k[:pos].copy(), out_c[:pos].copy()


@_jit
def merge_counts(oa, ka, ca, ob, kb, cb):
    """Sum of two sparse count sets (offsets, sorted keys, counts) feature by feature."""
    n_feat = oa.shape[0] - 1
    offsets = np.zeros(n_feat + 1, np.int64)
    out_k = np.empty(ka.shape[0] + kb.shape[0], np.int64)
    out_c = np.empty(ka.shape[0] + kb.shape[0], np.int64)
    pos = 0
    for f in range(n_feat):
        i, i1 = oa[f], oa[f + 1]
        j, j1 = ob[f], ob[f + 1]
        while i < i1 or j < j1:
            if j >= j1 or (i < i1 and ka[i] < kb[j]):
                out_k[pos] = ka[i]
                out_c[pos] = ca[i]
                i += 1
            elif i >= i1 or kb[j] < ka[i]:
                out_k[pos] = kb[j]
                out_c[pos] = cb[j]
                j += 1
            else:
                out_k[pos] = ka[i]
                out_c[pos] = ca[i] + cb[j]
                i += 1
                j += 1
            pos += 1
        offsets[f + 1] = pos
    return offsets, out_k[:pos].copy(), out_c[:pos].copy()


@_jit
def _rows_range(vals, keep_inf, lo, hi, pos_min, neg_max, n, n_small):
    """(R, F) floats: per-feature min, max, smallest positive and largest negative normal
    value, count of entering values and of zeros/subnormals; branch-free, along memory."""
    n_rows, n_feat = vals.shape
    for r in range(n_rows):
        for f in range(n_feat):
            v = np.float64(vals[r, f])
            a = abs(v)
            enters = v == v and (keep_inf or a != np.inf)
            v = v if enters else np.nan  # NaN fails every comparison below
            lo[f] = v if v < lo[f] else lo[f]
            hi[f] = v if v > hi[f] else hi[f]
            pos_min[f] = v if (v >= TINY and v < pos_min[f]) else pos_min[f]
            neg_max[f] = v if (v <= -TINY and v > neg_max[f]) else neg_max[f]
            n[f] += enters
            n_small[f] += enters and a < TINY


@_jit
def dist_counts_rows(x, vals, mode, drop, keep_inf):
    """:func:`dist_counts` for (R, F) floats with narrow key ranges and no zeros/subnormals.

    Returns ``(ok, offsets, keys, counts)``; ``ok`` is False (nothing counted)
    where a feature needs the general kernel. Keys come from the bits with one
    range check per value: a float32's float64 exponent is its own rebiased.
    """
    n_rows, n_feat = x.shape
    if mode == KEY_F32 and drop < 29:  # float32 values each in a bucket of their own: general kernel
        return False, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = np.full(n_feat, np.inf)
    hi = np.full(n_feat, -np.inf)
    pos_min = np.full(n_feat, np.inf)
    neg_max = np.full(n_feat, -np.inf)
    n = np.zeros(n_feat, np.int64)
    n_small = np.zeros(n_feat, np.int64)
    _rows_range(vals, keep_inf, lo, hi, pos_min, neg_max, n, n_small)
    # window of feature f: negative keys at nb[f] - mag, positive keys at pb[f] + mag
    nb = np.zeros(n_feat, np.int64)
    pb = np.zeros(n_feat, np.int64)
    spans = np.zeros((2, n_feat), np.int64)
    klo = np.zeros((2, n_feat), np.int64)
    total = np.int64(0)
    for f in range(n_feat):
        if n_small[f] > 0 or abs(lo[f]) == np.inf or abs(hi[f]) == np.inf:
            return False, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        if n[f] == 0:
            continue
        if lo[f] < 0:  # negative keys run from key(lo) to key(neg_max)
            a, b = _float_key(lo[f], drop), _float_key(neg_max[f], drop)
            spans[0, f], klo[0, f] = b - a + 1, a
        if hi[f] > 0:
            a, b = _float_key(pos_min[f], drop), _float_key(hi[f], drop)
            spans[1, f], klo[1, f] = b - a + 1, a
        if spans[0, f] + spans[1, f] > DENSE_WINDOW + 4 * n[f]:
            return False, np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        nb[f] = total - klo[0, f]  # key -mag sits at total + (-mag - klo0)
        pb[f] = total + spans[0, f] - klo[1, f]
        total += spans[0, f] + spans[1, f]
    window = np.zeros(total, np.int64)
    shift = drop - 29
    wide = mode == KEY_F64
    for r in range(n_rows):
        for f in range(n_feat):
            if wide:
                b = np.int64(x[r, f])
                a = b & ABS_MASK
                normal = np.uint64(a - SUBNORMAL_KEYS) < np.uint64(INF_BITS - SUBNORMAL_KEYS)
                mag = SUBNORMAL_KEYS + ((a - SUBNORMAL_KEYS) >> drop)
            else:
                b = np.int64(np.int32(x[r, f]))
                a = b & 0x7FFFFFFF
                normal = np.uint64(a - 0x00800000) < np.uint64(0x7F000000)
                # float64 bits of a normal float32: (a << 29) + (896 << 52); keys drop >= 29 bits
                mag = SUBNORMAL_KEYS + ((a + (np.int64(895) << 23)) >> shift)
            if normal:
                # nb[f] - mag for negatives, pb[f] + mag otherwise, without a branch on the
                # sign (random signs would mispredict half the time)
                neg = b >> 63
                window[pb[f] + mag + (neg & (nb[f] - pb[f] - 2 * mag))] += 1
            else:  # NaN, an omitted inf, or a float32 subnormal (a normal float64)
                k = _key(x[r, f], mode, drop, keep_inf)
                if k != KEY_SKIP:
                    window[(nb[f] + k) if k < 0 else (pb[f] + k)] += 1
    size = 0
    for j in range(total):
        size += window[j] != 0
    offsets = np.zeros(n_feat + 1, np.int64)
    out_k = np.empty(size, np.int64)
    out_c = np.empty(size, np.int64)
    pos = 0
    at = 0
    for f in range(n_feat):
        for j in range(spans[0, f]):  # negatives: window order is ascending key
            if window[at + j] != 0:
                out_k[pos] = klo[0, f] + j
                out_c[pos] = window[at + j]
                pos += 1
        at += spans[0, f]
        for j in range(spans[1, f]):
            if window[at + j] != 0:
                out_k[pos] = klo[1, f] + j
                out_c[pos] = window[at + j]
                pos += 1
        at += spans[1, f]
        offsets[f + 1] = pos
    return True, offsets, out_k[:pos].copy(), out_c[:pos].copy()
