"""BLIP image captioning through transformers: one plain-English sentence per image (better
than tags for styles and for models trained on natural language)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.captioning.sources import CaptionModelError, resolve_folder
from engine.data.images import load_rgb

DEFAULT_REPO = "Salesforce/blip-image-captioning-large"


@dataclass
class BlipOptions:
    max_new_tokens: int = 40
    min_new_tokens: int = 5
    num_beams: int = 3
    batch_size: int = 4


class BlipCaptioner:
    def __init__(self, folder: Path, device: str | None = None):
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            self.processor = BlipProcessor.from_pretrained(folder)
            self.model = BlipForConditionalGeneration.from_pretrained(folder, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise CaptionModelError(f"{folder} is not a usable BLIP model folder ({err})", "caption_blip_folder",
                                    path=folder, error=err) from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()

    @classmethod
    def load(cls, source: str = DEFAULT_REPO, local_files_only: bool = False,
             cache_dir: Path | None = None) -> "BlipCaptioner":
        return cls(resolve_folder(source, local_files_only, cache_dir))

    def caption(self, paths: list[Path], opts: BlipOptions) -> list[str]:
        import torch

        images = [load_rgb(p) for p in paths]
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=opts.max_new_tokens,
                                      min_new_tokens=opts.min_new_tokens, num_beams=opts.num_beams)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
