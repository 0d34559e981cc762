"""kohya's numbering of a UNet's blocks, for its block weights (down/mid/up_lr_weight) and
per-block ranks (block_dims, block_alphas, conv_block_dims, conv_block_alphas).

SD 1.x/2.x: 25 blocks, IN00-IN11 (0-11; IN00 is conv_in, which has no LoRA), MID (12),
OUT00-OUT11 (13-24), numbered from diffusers' block names with three slots per down/up block.
SDXL: 23 blocks, 0 (the time/label embeddings), IN00-IN08 (1-9: input_blocks 0-8), MID0-2
(10-12: the middle block's three parts), OUT00-OUT08 (13-21: output_blocks 0-8) and 22 (out),
numbered from the original (SGM) module names. The learning-rate weights cover the IN/MID/OUT
blocks (12 + 1 + 12, or 9 + 3 + 9 values); the ranks every block (25, or 23 values).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class BlockLayout:
    name: str
    per_side: int       # down_lr_weight / up_lr_weight values
    mid: int            # mid_lr_weight values
    down_start: int     # the block number of IN00
    total: int          # block_dims values

    @property
    def mid_start(self) -> int:
        return self.down_start + self.per_side

    @property
    def up_start(self) -> int:
        return self.mid_start + self.mid

    def label(self, idx: int) -> str:
        if self.down_start <= idx < self.mid_start:
            return f"IN{idx - self.down_start:02d}"
        if self.mid_start <= idx < self.up_start:
            return "MID" if self.mid == 1 else f"MID{idx - self.mid_start}"
        if self.up_start <= idx < self.up_start + self.per_side:
            return f"OUT{idx - self.up_start:02d}"
        return "BASE" if idx == 0 else "OUT"


SD = BlockLayout("SD 1.x/2.x", per_side=12, mid=1, down_start=0, total=25)
SDXL = BlockLayout("SDXL", per_side=9, mid=3, down_start=1, total=23)
LAYOUTS = (SD, SDXL)


def layout_for(sgm_names: bool) -> BlockLayout:
    """SDXL's layout for a UNet whose files use the original (SGM) names, else SD's."""
    return SDXL if sgm_names else SD


_SD_BLOCK = re.compile(r"(up|down)_blocks[._](\d+)[._](resnets|attentions|upsamplers|downsamplers)[._](\d+)")
_SGM_BLOCK = re.compile(r"(input_blocks|middle_block|output_blocks)[._](\d+)")


def block_index(module: str, layout: BlockLayout = SD) -> int:
    """The block a LoRA module sits in; -1 outside them (text encoder; for SD also the time
    embedding and conv_out). ``module``: for SD a diffusers path ("down_blocks.1.attentions.0.
    proj_in") or file key; for SDXL an SGM path ("input_blocks.4.1.proj_in") or file key."""
    if layout is SDXL:
        name = module.removeprefix("lora_unet_")
        m = _SGM_BLOCK.match(name)
        if m:
            start = {"input_blocks": layout.down_start, "middle_block": layout.mid_start,
                     "output_blocks": layout.up_start}[m.group(1)]
            return start + int(m.group(2))
        if re.match(r"(time_embed|label_emb)[._]", name):
            return 0
        return layout.total - 1 if re.match(r"out[._]", name) else -1
    m = _SD_BLOCK.search(module)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
        # IN00 is conv_in: the down blocks' slots start at IN01
        return layout.down_start + 1 + idx if side == "down" else layout.up_start + idx
    return layout.mid_start if re.search(r"mid_block[._]", module) else -1


def lr_weight(idx: int, layout: BlockLayout, down: list[float] | None, mid: list[float] | None,
              up: list[float] | None) -> float:
    """Block ``idx``'s learning-rate weight (1 where a list is not given, and outside IN/MID/OUT)."""
    for start, count, values in ((layout.down_start, layout.per_side, down), (layout.mid_start, layout.mid, mid),
                                 (layout.up_start, layout.per_side, up)):
        if start <= idx < start + count:
            return values[idx - start] if values else 1.0
    return 1.0
