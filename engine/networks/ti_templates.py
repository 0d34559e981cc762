"""Prompt templates for Textual Inversion: ``[name]`` becomes the new token(s), ``[filewords]`` the
image's own caption. "subject" teaches a thing, "style" a look; the *_filewords variants keep
what the caption already explains (background, pose) out of the embedding."""
from __future__ import annotations

_SUBJECT = ["a photo of a [name]", "a rendering of a [name]", "a close-up photo of a [name]",
            "a bright photo of a [name]", "a good photo of a [name]", "a photo of the [name]",
            "a cropped photo of a [name]", "a picture of a [name]", "an image of the [name]"]
_STYLE = ["a painting in the style of [name]", "an artwork in the style of [name]",
          "a picture in the style of [name]", "a rendering in the style of [name]",
          "a drawing in the style of [name]", "an illustration in the style of [name]"]

TEMPLATES: dict[str, list[str]] = {
    "subject": _SUBJECT,
    "style": _STYLE,
    "subject_filewords": [t + ", [filewords]" for t in _SUBJECT],
    "style_filewords": [t + ", [filewords]" for t in _STYLE],
    "filewords": ["[name], [filewords]"],
}
