"""End to end in a real diffusers pipeline: a small randomly initialised UNet2DModel (built from a config, no
download) in DDPMPipeline, once with diffusers' scheduler and once with pydiff's drop-in of the same config.
The pipeline drives the loop exactly as user code does (its own timesteps, generator, progress bar)."""
import pytest
import torch
import diffusers
from diffusers import DDPMPipeline

import pydiff.diffusers as pd
from helpers import rel_l2


@pytest.mark.parametrize("name,config,steps", [
    ("DDPMScheduler", {}, 12),
    ("DDPMScheduler", {"variance_type": "fixed_large", "prediction_type": "v_prediction"}, 10),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}, 10),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, 10),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 10),
    ("DPMSolverSinglestepScheduler", {}, 9),
])
def test_pipeline_images_match_diffusers(unet, name, config, steps):
    images = []
    for module in (diffusers, pd):
        sched = getattr(module, name)(**config)
        pipe = DDPMPipeline(unet=unet, scheduler=sched)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            out = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=steps,
                       output_type="pt").images
        if module is pd:
            assert sched.last_fallback_reason is None, sched.last_fallback_reason
        images.append(out)
    assert images[0].shape == (2, 3, 8, 8)
    assert rel_l2(images[1], images[0]) < 1e-5
