"""The parameter grid of deform_conv2d cases shared by the test files."""

import pytest

CASES = {
    "3x3": dict(),
    "1x1": dict(kernel=1, padding=0),
    "5x3-asymmetric": dict(kernel=(5, 3), stride=(2, 1), padding=(2, 0), dilation=(1, 2),
                           size=(11, 8)),
    "dilated": dict(dilation=(3, 2), padding=(3, 2), size=(9, 10)),
    "groups": dict(in_channels=4, out_channels=6, groups=2),
    "offset-groups": dict(in_channels=6, out_channels=4, offset_groups=3),
    "groups-and-offset-groups": dict(in_channels=8, out_channels=4, groups=2, offset_groups=4,
                                     stride=2, size=(9, 7)),
    "v1-no-mask-no-bias": dict(mask=False, bias=False),
    "batch-1": dict(batch=1),
    "offsets-leaving-image": dict(offset_scale=12.0),
    # More channels than the CPU backward's vector lanes and channel blocks,
    # with a remainder of each.
    "wide-channels": dict(in_channels=37, out_channels=5, size=(6, 5)),
}


def case_params(names=None):
    return [pytest.param(CASES[name], id=name) for name in (names or CASES)]
