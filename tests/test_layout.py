import numpy as np
import pytest
import torch

from streamnorm.errors import LayoutError, StreamnormError
from streamnorm.layout import as_reduction_view, parse_layout


@pytest.mark.parametrize("text,axis", [("NCHW", 1), ("NHWC", 3), ("NF", 1), ("NCL", 1),
                                       ("NTHWC", 4), ("CHW", 0), ("HWC", 2), ("N", None),
                                       ("NHW", None), ("BTF", 2)])
def test_parse_layout_finds_the_feature_axis(text, axis):
    assert parse_layout(text).feature_axis == axis


@pytest.mark.parametrize("bad", ["", "nchw", "NCHC", "NCFW", "N C", 3, None, "NCH1"])
def test_parse_layout_rejects_malformed(bad):
    with pytest.raises(LayoutError) as info:
        parse_layout(bad)
    assert isinstance(info.value, StreamnormError)


def test_rank_mismatch_names_both():
    with pytest.raises(LayoutError, match=r"3 dimension.*'NCHW' names 4"):
        as_reduction_view(np.zeros((2, 3, 4)), parse_layout("NCHW"))


def test_views_do_not_copy_contiguous_or_channels_last():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    v = as_reduction_view(x, parse_layout("NCHW"))
    assert v.shape == (2, 3, 20) and np.shares_memory(v, x)
    t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    tv = as_reduction_view(t.numpy(), parse_layout("NCHW"))
    assert tv.shape == (40, 3, 1) and np.shares_memory(tv, t.numpy())
    # per-feature contents are unchanged by the reordering
    for c in range(3):
        assert sorted(tv[:, c, 0].tolist()) == sorted(x[:, c].ravel().tolist())


def test_non_contiguous_slices_are_copied_correctly():
    x = np.arange(6 * 4 * 10, dtype=np.int16).reshape(6, 4, 10)[::2, :, 1:9]
    v = as_reduction_view(x, parse_layout("NCL"))
    assert v.flags.c_contiguous
    for c in range(4):
        assert sorted(v[:, c].ravel().tolist()) == sorted(x[:, c].ravel().tolist())


def test_no_feature_axis_reduces_everything():
    x = np.ones((3, 5, 2))
    assert as_reduction_view(x, parse_layout("NHW")).shape == (30, 1, 1)
