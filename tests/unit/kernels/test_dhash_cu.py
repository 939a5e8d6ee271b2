"""kernels/dhash.cu through the g++ host shim vs the torch reference: equal hashes."""

import pytest
import torch

from tests.unit.kernels.conftest import scenes
from turbobatch.kernels import launchers, reference


@pytest.mark.parametrize("shape", [(3, 37, 53, 3), (2, 8, 9, 3), (2, 64, 64, 1), (1, 71, 90, 4), (2, 300, 17)])
def test_dhash_matches_reference(shim_launch, shape):
    g = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    assert torch.equal(launchers.dhash64(images, shim_launch), reference.dhash64(images))


def test_dhash_of_scenes_and_a_large_image(shim_launch):
    images = scenes(2, 512, 512)
    got = launchers.dhash64(images, shim_launch)
    assert torch.equal(got, reference.dhash64(images))
    assert got[0] != got[1]


def test_too_small(shim_launch):
    with pytest.raises(ValueError, match="at least 8 rows x 9 columns"):
        launchers.dhash64(torch.zeros(1, 7, 9, 3, dtype=torch.uint8), shim_launch)
