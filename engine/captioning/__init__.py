"""Automatic captions for a dataset: WD14 tagger (booru tags, ONNX) and BLIP (sentences)."""
