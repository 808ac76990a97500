"""Merge partial statistics across ``torch.distributed`` ranks.

Each rank of a DDP job accumulates statistics of its own shard;
:func:`merge_across_ranks` gathers every rank's partial state and merges them
in rank order, so every rank ends with the same, deterministic result
(integer statistics bit-identical to a single pass; float statistics by
Chan's merge, identical on every rank).

The states travel as JSON (arrays and floats as the hexadecimal of their
little-endian bytes, so every bit survives; big integers as decimal strings)
in ``uint8`` tensors: sizes are all-gathered first, then the padded payloads.
Nothing is pickled, so a rank cannot make another run code. Works with
``gloo`` (CPU tensors) and ``nccl`` (CUDA tensors; see
:func:`merge_across_ranks` for which device each rank uses).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from .accumulate import StatsAccumulator
from .distribution import Distribution
from .errors import IncompatibleStatsError, StreamnormError
from .stats import Stats

__all__ = ["decode_state", "encode_state", "merge_across_ranks"]

_STATS_FIELDS = ("layout", "feature_names", "dtype", "count", "nan_count", "mean", "m2",
                 "min", "max", "histogram", "int_sum", "int_sumsq", "shift", "shifted_mean",
                 "masked_count")
_EXACT_INT = 1 << 53  # larger Python ints travel as strings


def _enc(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise StreamnormError(f"cannot encode an array of dtype {value.dtype}")
        # the little-endian bytes in hex: every bit survives (NaN signs too)
        raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        return {"__ndarray__": value.dtype.name, "shape": list(value.shape), "hex": raw.hex()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_EXACT_INT < value < _EXACT_INT else {"__int__": str(value)}
    if isinstance(value, float):
        return {"__float__": struct.pack("<d", value).hex()}
    if isinstance(value, (list, tuple)):
        return [_enc(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise StreamnormError("only dicts with str keys can be encoded")
        return {"__dict__": {k: _enc(v) for k, v in value.items()}}
    raise StreamnormError(f"cannot encode a {type(value).__name__} in a statistics state")


def _dec(value: Any) -> Any:
    if isinstance(value, list):
        return [_dec(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype(value["__ndarray__"])
        if dtype.kind not in "biuf":
            raise StreamnormError(f"malformed encoded state: array dtype {dtype}")
        flat = np.frombuffer(bytes.fromhex(value["hex"]), dtype=dtype.newbyteorder("<"))
        return flat.astype(dtype).reshape(value["shape"])
    if "__int__" in value:
        return int(value["__int__"])
    if "__float__" in value:
        return struct.unpack("<d", bytes.fromhex(value["__float__"]))[0]
    if "__dict__" in value:
        return {k: _dec(v) for k, v in value["__dict__"].items()}
    raise StreamnormError(f"malformed encoded state: unknown object with keys {sorted(value)}")


def encode_state(obj: Stats | StatsAccumulator) -> bytes:
    """JSON bytes of a :class:`Stats` or of an accumulator's state, exact to the bit.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> s = sn.compute_stats([np.array([[0.1], [0.7]])], layout="NF")
    >>> decode_state(encode_state(s)).equals(s)
    True
    """
    if isinstance(obj, Stats):
        state = {f: getattr(obj, f) for f in _STATS_FIELDS}
        d = obj.distribution
        state["distribution"] = None if d is None else {
            "kind": d.kind, "error": d.error, "offsets": d.offsets, "keys": d.keys, "counts": d.counts}
        payload = {"kind": "stats", "state": _enc(state)}
    elif isinstance(obj, StatsAccumulator):
        payload = {"kind": "accumulator", "state": _enc(obj.state_dict())}
    else:
        raise StreamnormError(
            f"merge_across_ranks takes a streamnorm.Stats or StatsAccumulator, got "
            f"{type(obj).__name__}"
        )
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


def decode_state(data: bytes, like: StatsAccumulator | None = None) -> Stats | StatsAccumulator:
    """Inverse of :func:`encode_state`; accumulator states load into a copy of ``like``."""
    try:
        payload = json.loads(data.decode())
        kind, state = payload["kind"], _dec(payload["state"])
        if kind == "stats":
            fields = dict(state)
            for f in ("int_sum", "int_sumsq", "feature_names"):
                if fields.get(f) is not None:
                    fields[f] = tuple(fields[f])
            if fields.get("distribution") is not None:
                fields["distribution"] = Distribution(**fields["distribution"])
            return Stats(**fields)
        if kind == "accumulator":
            acc = like.copy() if like is not None else StatsAccumulator(
                layout=state["layout"], histogram=state["histogram"])
            acc.load_state_dict(state)
            return acc
    except StreamnormError:
        raise
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StreamnormError(f"malformed encoded statistics state: {exc!r}") from None
    raise StreamnormError(f"malformed encoded statistics state: unknown kind {kind!r}")


def _collective_device(group: Any) -> Any:
    """The device this rank's payload tensors must be on for a collective over ``group``.

    A group with a CPU backend (``gloo``, also ``"cpu:gloo,cuda:nccl"``) works
    on host memory. An NCCL-only group uses the device bound to the group
    (``init_process_group(..., device_id=...)``, inherited by its subgroups),
    else the current CUDA device of this process.
    """
    import torch
    import torch.distributed as dist

    backend = str(dist.get_backend(group))
    if "nccl" not in backend or "gloo" in backend:
        return torch.device("cpu")
    pg = group if group is not None else dist.group.WORLD
    bound = getattr(pg, "bound_device_id", None)
    if bound is not None:
        return torch.device(bound)
    if not torch.cuda.is_available():
        raise StreamnormError(
            "merge_across_ranks: the process group uses NCCL, which needs a CUDA device, but this "
            "process sees none; use a gloo group (init_process_group('cpu:gloo,cuda:nccl') adds "
            "one beside NCCL) or make the rank's GPU visible"
        )
    return torch.device("cuda", torch.cuda.current_device())


def _gather_bytes(payload: bytes, group: Any) -> list[bytes]:
    import torch
    import torch.distributed as dist

    device = _collective_device(group)
    world = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    if payload:
        buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    bufs = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(bufs, buf, group=group)
    return [b[:n].cpu().numpy().tobytes() for b, n in zip(bufs, lengths)]


def merge_across_ranks(
    stats_or_accumulator: Stats | StatsAccumulator, group: Any = None
) -> Stats | StatsAccumulator:
    """Merge every rank's partial statistics; each rank gets the same result.

    Parameters
    ----------
    stats_or_accumulator : Stats or StatsAccumulator
        This rank's partial result. Every rank of ``group`` must call this
        function (it is a collective) with the same kind of object.
    group : ProcessGroup, optional
        Default: the world.

    Notes
    -----
    Which device the collective uses: a group with a CPU backend (``gloo``,
    or ``"cpu:gloo,cuda:nccl"``) exchanges host tensors. An NCCL-only group
    uses the device bound to it, ``init_process_group("nccl",
    device_id=torch.device("cuda", local_rank))`` (the recommended way: every
    rank then has its own GPU whatever the current device); without a bound
    device it uses the current CUDA device, so each rank must first call
    ``torch.cuda.set_device(local_rank)``, or every rank of a node would use
    ``cuda:0`` and NCCL would fail or hang. A rank that sees no CUDA device
    under NCCL gets a :class:`StreamnormError`.

    Returns
    -------
    Stats or StatsAccumulator
        Of the kind given: the merge of all ranks in rank order (a new object;
        the argument is left as it was). When ``torch.distributed`` is not
        initialized, a copy of the argument (a single process is its own
        world).

    Raises
    ------
    StreamnormError
        On every rank alike, when ranks pass different kinds or incompatible
        statistics (layout, features), naming the ranks.

    Examples
    --------
    >>> import numpy as np, streamnorm as sn
    >>> from streamnorm.distributed import merge_across_ranks
    >>> acc = sn.StatsAccumulator(layout="NF").update(np.ones((4, 2), np.uint8))
    >>> merge_across_ranks(acc).result().count.tolist()   # not initialized: a copy
    [4, 4]
    """
    import torch.distributed as dist

    payload = encode_state(stats_or_accumulator)
    like = stats_or_accumulator if isinstance(stats_or_accumulator, StatsAccumulator) else None
    if not (dist.is_available() and dist.is_initialized()):
        return decode_state(payload, like)
    parts = [decode_state(p, like) for p in _gather_bytes(payload, group)]
    kinds = {type(p).__name__ for p in parts}
    if len(kinds) > 1:
        names = [type(p).__name__ for p in parts]
        raise StreamnormError(
            f"ranks passed different kinds of statistics to merge_across_ranks: {names} "
            f"(by rank); pass a Stats on every rank or a StatsAccumulator on every rank"
        )
    if isinstance(parts[0], Stats):
        merged: Any = parts[0]
    else:
        merged = like.copy()
        merged.reset()
        merged.merge(parts[0])
    for rank, part in enumerate(parts[1:], start=1):
        try:
            merged = merged.merge(part)
        except IncompatibleStatsError as exc:
            raise IncompatibleStatsError(
                f"rank {rank}'s statistics cannot be merged with those of ranks 0..{rank - 1}: "
                f"{exc}"
            ) from None
    return merged
