"""Fixtures of the drop-in tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def unet():
    """A small randomly initialised UNet2DModel, built from a config (no download), for pipeline tests."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(8, 16), norm_num_groups=4,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return model.eval()
