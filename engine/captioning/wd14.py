"""WD14 tagger (SmilingWolf's ONNX models) through onnxruntime: booru-style tags per image.

The model takes a batch of square BGR images, 0-255 float, NHWC, at the size its input declares
(448 for the released models), and returns one probability per row of ``selected_tags.csv``
(category 9 = rating, 4 = character, 0 = general).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engine.captioning.sources import CaptionModelError, resolve_files
from engine.data.images import load_rgb

DEFAULT_REPO = "SmilingWolf/wd-v1-4-moat-tagger-v2"
MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
# Emoticon tags whose underscore is part of the face, not a word separator.
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
           ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}


@dataclass
class WD14Options:
    general_threshold: float = 0.35
    character_threshold: float = 0.35
    exclude: list[str] = field(default_factory=list)   # tags never written (either spelling)
    underscores_to_spaces: bool = True
    escape_brackets: bool = True                       # "(" -> "\(" so A1111 does not read weights
    include_rating: bool = False
    batch_size: int = 4


def clean_tag(tag: str, opts: WD14Options) -> str:
    if opts.underscores_to_spaces and tag not in KAOMOJI:
        tag = tag.replace("_", " ")
    if opts.escape_brackets:
        tag = tag.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return tag


class WD14Tagger:
    def __init__(self, model_path: Path, tags_path: Path, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CaptionModelError("the WD14 tagger needs onnxruntime (pip install onnxruntime)",
                                    "caption_onnxruntime") from None
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        try:
            self.session = ort.InferenceSession(str(model_path), providers=chosen or available)
        except Exception as err:
            raise CaptionModelError(f"{model_path} is not a usable ONNX model ({err})", "caption_onnx_model",
                                    path=model_path, error=err) from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[1]) if isinstance(inp.shape[1], int) else 448
        with open(tags_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        self.names = [r["name"] for r in rows]
        self.categories = np.array([int(r["category"]) for r in rows])
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(self.names):
            raise CaptionModelError(f"{tags_path.name} lists {len(self.names)} tags but the model "
                                    f"outputs {n_out}", "caption_tag_count", name=tags_path.name,
                                    tags=len(self.names), outputs=n_out)

    @classmethod
    def load(cls, source: str = DEFAULT_REPO, local_files_only: bool = False,
             cache_dir: Path | None = None) -> "WD14Tagger":
        files = resolve_files(source, [MODEL_FILE, TAGS_FILE], local_files_only, cache_dir)
        return cls(files[MODEL_FILE], files[TAGS_FILE])

    def prepare(self, im: Image.Image) -> np.ndarray:
        """Pad to a white square (keeps the whole picture), resize, RGB -> BGR float 0-255."""
        side = max(im.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        arr = np.asarray(canvas.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
        return arr[:, :, ::-1].copy()

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([self.prepare(im) for im in images])
        return self.session.run(None, {self.input_name: batch})[0]

    def tags_for(self, probs: np.ndarray, opts: WD14Options) -> list[str]:
        """Character tags first, then general, each by descending confidence."""
        excluded = {e.strip().lower() for e in opts.exclude} | {e.strip().lower().replace(" ", "_")
                                                               for e in opts.exclude}
        out = []
        cats = [(CHARACTER, opts.character_threshold), (GENERAL, opts.general_threshold)]
        if opts.include_rating:
            cats.insert(0, (RATING, -1.0))
        for cat, threshold in cats:
            idx = np.nonzero(self.categories == cat)[0]
            if cat == RATING:
                idx = idx[np.argsort(-probs[idx])][:1]  # the single most likely rating
            else:
                idx = idx[probs[idx] >= threshold]
                idx = idx[np.argsort(-probs[idx], kind="stable")]
            out += [self.names[i] for i in idx if self.names[i].lower() not in excluded]
        return [clean_tag(t, opts) for t in out]

    def caption(self, paths: list[Path], opts: WD14Options) -> list[str]:
        probs = self.probabilities([load_rgb(p) for p in paths])
        return [", ".join(self.tags_for(p, opts)) for p in probs]
