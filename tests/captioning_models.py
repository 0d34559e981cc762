"""Tiny captioning models built offline, so the real WD14 (onnxruntime) and BLIP (transformers)
code paths run in tests: an ONNX graph with the tagger's input/output contract, and a BLIP with
a handful of layers and a 16-word vocabulary."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

TAGS = [  # name, category, (B, G, R) weights, bias: sigmoid(w . mean_bgr + b)
    ("general", 9, (0, 0, 0), 2.0),
    ("sensitive", 9, (0, 0, 0), -2.0),
    ("red_shape", 0, (-10, 0, 10), -3.0),
    ("blue_(thing)", 0, (10, 0, -10), -3.0),
    ("^_^", 0, (0, 0, 0), 0.5),
    ("character_a", 4, (0, 0, 8), -6.0),
    ("white_background", 0, (0, 0, 0), 1.0),
]


def build_tiny_wd14(folder: Path, size: int = 32) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = np.array([t[2] for t in TAGS], dtype=np.float32).T  # [3, T]
    b = np.array([t[3] for t in TAGS], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(TAGS)])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
                     numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat, _, _) in enumerate(TAGS):
            out.writerow([i, name, cat, 100 - i])
    return folder


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "blue", "circle", "square",
         "on", "white", "background", "the", "of"]


def build_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]", model_max_length=32)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = BlipTextConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=40,
                          bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                    projection_dim=32))
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
