"""Drop-in replacements for diffusers schedulers whose ``step`` runs as fused kernels.

``from pydiff.diffusers import DDIMScheduler`` and ``pipe.scheduler = DDIMScheduler.from_config(
pipe.scheduler.config)``: same config, same outputs, one kernel per step. Requires ``diffusers``.

Saving and loading pipelines: diffusers records a component's library as its class's module when that is not
one of its own libraries, and on loading resolves the class there and checks it against the loadable base
classes (``SchedulerMixin`` among them) looked up *in that same module*. So the drop-ins say they live here
(``__module__ = "pydiff.diffusers"``: ``model_index.json`` records ``["pydiff.diffusers", "DDIMScheduler"]``)
and this module exposes ``SchedulerMixin``. diffusers resolves such a library only from ``sys.modules``:
``import pydiff.diffusers`` before ``DiffusionPipeline.from_pretrained``.
"""
from diffusers import SchedulerMixin  # noqa: F401  (read by diffusers' pipeline loader, see above)

from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .score_sde_ve import ScoreSdeVeScheduler
from .score_sde_vp import ScoreSdeVpScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
           "ScoreSdeVeScheduler", "ScoreSdeVpScheduler"]

for _cls in (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler,
             ScoreSdeVeScheduler, ScoreSdeVpScheduler):
    _cls.__module__ = __name__
del _cls
