"""kernels/stats.py: reducing the kernel's per-block partials."""

import torch

from turbobatch.kernels.stats import from_partials


def test_from_partials_reduces_blocks_exactly():
    values = [torch.tensor([0, 10, 255]), torch.tensor([7, 7, 7])]  # two images, 3 values, 2 "blocks"
    rows = []
    for v in values:
        parts = [v[:1], v[1:]]
        rows.append([[0, 0, int(p.sum()), int((p * p).sum()), int(p.min()), int(p.max())] for p in parts])
    rows[0][1][0] = 2  # two NaN seen by the second block of image 0
    stats = from_partials(torch.tensor(rows), 3)
    assert stats.nan.tolist() == [2, 0] and stats.inf.tolist() == [0, 0]
    assert stats.min.tolist() == [0, 7] and stats.max.tolist() == [255, 7]
    ref = torch.stack(values).double()
    torch.testing.assert_close(stats.mean, ref.mean(1))
    torch.testing.assert_close(stats.std, ref.std(1, unbiased=False))
    assert stats.broken().tolist() == [True, False]
    assert stats.black().tolist() == [False, True] and stats.black(5).tolist() == [False, False]
