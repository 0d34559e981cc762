"""The settings a base model draws best with, as the defaults of grids, the Compare tab and card
samples: from the base's family record (engine.models.families), or the embedded model's own.
The base is not loaded: its family is read from its configs or tensor names."""
from __future__ import annotations

from dataclasses import dataclass

from engine.models import families


@dataclass(frozen=True)
class SamplingDefaults:
    cfg_scale: float
    steps: int
    size: int
    sampler: str = "euler_a"
    # images per grid cell: one seed is too noisy to pick an epoch by; more cost time per cell
    seeds_per_cell: int = 2


# The embedded shapes model (64 px): at CFG 7 its demo star comes out nearly blank for most
# seeds, at 5 it is drawn (the value its quality tests and the demo jobs' sample lines use).
# Its images are tiny, so a cell can show four seeds.
EMBEDDED = SamplingDefaults(cfg_scale=5.0, steps=20, size=64, seeds_per_cell=4)


def for_family(family_id: str) -> SamplingDefaults:
    rec = families.family(family_id)
    return SamplingDefaults(cfg_scale=rec.sample_cfg, steps=rec.sample_steps, size=rec.default_resolution)


def for_base(base: str) -> SamplingDefaults:
    """Defaults for a base model named as a job names it (embedded, folder, file or hub id); an
    unknown or unreadable base gets SD 1.x's."""
    from engine.models.loader import EMBEDDED_NAMES

    if not base or base.strip() in EMBEDDED_NAMES:
        return EMBEDDED
    from engine.models.loader import family_of_base

    found = family_of_base(base.strip())
    return for_family(found if found in families.BY_ID else families.DEFAULT.id)


def for_job(job) -> SamplingDefaults:
    """The base's defaults, with the job's ``[sample]`` steps / cfg_scale / sampler where the job
    sets them (what images drawn for training, such as class images, are made with)."""
    from dataclasses import replace

    found = for_base(job.model.base)
    given = {k: getattr(job.sample, k) for k in ("steps", "cfg_scale", "sampler") if k in job.sample.model_fields_set}
    return replace(found, **given)
