"""How AUTOMATIC1111's built-in Lora extension and ComfyUI place the modules of a kohya-style
LoRA / LyCORIS file on a checkpoint, re-implemented from their documented behaviour so tests can
check our files against the consumers' rules rather than our own reader.

Both work on the checkpoint's original (LDM / SGM) layout, which the tests take from an
original-layout state dict (names and shapes only).

A1111: every module of the loaded model is known by its path with dots turned into underscores
(SD 1.x text encoder under ``transformer_...``, SD 2.x's OpenCLIP under ``model_...``, SDXL's two
encoders under ``0_transformer_...`` / ``1_model_...``, the UNet under ``diffusion_model_...``). A
file's module name is first translated from diffusers' block names with SD 1.x's block arithmetic
(three input slots per down block, upsampler after the attention except in up block 0), then
looked up; a ``_q_proj`` / ``_k_proj`` / ``_v_proj`` name may name one third of an OpenCLIP
attention's fused projection (applied only when q, k, v and out_proj are all present); failing
that, ``lora_unet`` is replaced by ``diffusion_model`` (names already in the original layout) and
``lora_te1_text_model`` by ``0_transformer_text_model`` or ``transformer_text_model``.

ComfyUI: a key map from file names to model weights: ``lora_unet_`` + any original UNet weight
path, ``lora_unet_`` + the diffusers name of each UNet weight it converts (resnets, attention
blocks, samplers, embeddings), and for each text encoder layer the six projections
(q/k/v/out, fc1/fc2) under ``lora_te_`` / ``lora_te1_`` (the first encoder) and ``lora_te2_``
(SDXL's second).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# ---------------------------------------------------------------------------------------------- A1111

_A1111_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
                 "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _open_clip_part(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def a1111_compvis_name(key: str, is_sd2: bool) -> str:
    """A1111's translation of a diffusers-style module name (unchanged when none applies)."""
    def suffix(kind: str, rest: str) -> str:
        return _A1111_RESNET.get(rest, rest) if kind == "resnets" else rest

    if m := re.match(r"lora_unet_conv_in(.*)", key):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := re.match(r"lora_unet_conv_out(.*)", key):
        return f"diffusion_model_out_2{m[1]}"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        slot, part = 1 + int(m[1]) * 3 + int(m[3]), 1 if m[2] == "attentions" else 0
        return f"diffusion_model_input_blocks_{slot}_{part}_{suffix(m[2], m[4])}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        slot = 1 if m[1] == "attentions" else int(m[2]) * 2
        return f"diffusion_model_middle_block_{slot}_{suffix(m[1], m[3])}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        slot, part = int(m[1]) * 3 + int(m[3]), 1 if m[2] == "attentions" else 0
        return f"diffusion_model_output_blocks_{slot}_{part}_{suffix(m[2], m[4])}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        block = int(m[1])
        return f"diffusion_model_output_blocks_{2 + block * 3}_{2 if block > 0 else 1}_conv"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", key):
        return f"1_model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
    return key


def a1111_layers(original: dict[str, torch.Size]) -> dict[str, torch.Size]:
    """A1111's layer names -> weight shape, from a checkpoint's original-layout keys. An OpenCLIP
    attention is one layer holding the fused (3 x width, width) q/k/v projection."""
    prefixes = {"model.diffusion_model.": "diffusion_model.", "cond_stage_model.transformer.": "transformer.",
                "cond_stage_model.model.": "model.", "conditioner.embedders.0.transformer.": "0_transformer.",
                "conditioner.embedders.1.model.": "1_model."}
    out = {}
    for key, shape in original.items():
        module, _, param = key.rpartition(".")
        if param not in ("weight", "in_proj_weight"):
            continue
        for prefix, name in prefixes.items():
            if module.startswith(prefix):
                out[(name + module[len(prefix):]).replace(".", "_")] = torch.Size(shape)
    return out


@dataclass
class Placed:
    layer: str
    part: str | None  # "q_proj" / "k_proj" / "v_proj": a third of a fused projection


def a1111_place(module: str, layers: dict[str, torch.Size]) -> Placed | None:
    """Where A1111 applies the file module ``module`` (None: "failed to match")."""
    is_sd2 = any(name.startswith("model_transformer_resblocks") for name in layers)
    key = a1111_compvis_name(module, is_sd2)
    if key in layers:
        return Placed(key, None)
    if (m := re.match(r"(.*)_([qkv]_proj)$", key)) and m[1] in layers:
        return Placed(m[1], m[2])
    if "lora_unet" in module:
        key = module.replace("lora_unet", "diffusion_model")
        return Placed(key, None) if key in layers else None
    if "lora_te1_text_model" in module:
        for replacement in ("0_transformer_text_model", "transformer_text_model"):
            key = module.replace("lora_te1_text_model", replacement)
            if key in layers:
                return Placed(key, None)
    return None


def a1111_problems(modules: dict[str, torch.Size], layers: dict[str, torch.Size]) -> list[str]:
    """Every file module A1111 could not place or apply; ``modules``: module -> its delta's shape."""
    problems, fused = [], {}
    for module, delta in modules.items():
        placed = a1111_place(module, layers)
        if placed is None:
            problems.append(f"{module}: no layer")
            continue
        weight = layers[placed.layer]
        if placed.part:
            fused.setdefault(placed.layer, set()).add(placed.part)
            if (delta[0] * 3, *delta[1:]) != tuple(weight):
                problems.append(f"{module}: {tuple(delta)} is not a third of {tuple(weight)}")
        elif delta.numel() != weight.numel():
            problems.append(f"{module}: {tuple(delta)} does not fit {tuple(weight)}")
    for layer, parts in fused.items():  # applied only with q, k, v and the output projection
        if parts != {"q_proj", "k_proj", "v_proj"} or f"{layer}_out_proj" not in layers:
            problems.append(f"{layer}: only {sorted(parts)} of q/k/v")
    return problems


# -------------------------------------------------------------------------------------------- ComfyUI

_COMFY_RESNET = {"in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.3": "conv2",
                 "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}
_COMFY_ATTENTION = ("proj_in", "proj_out", "norm")
_COMFY_TRANSFORMER = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
_COMFY_BASIC = {"class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
                "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
                "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
                "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2"}
_COMFY_CLIP = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj",
               "self_attn.out_proj")


def comfyui_unet_modules(config) -> dict[str, str]:
    """ComfyUI's diffusers module path -> original path, built from the UNet's block layout
    (resnets per block, transformer depth per slot), as its converter does."""
    def depths(per_block, types) -> list[int]:
        per_block = per_block if isinstance(per_block, (list, tuple)) else [per_block] * len(types)
        return [d if "CrossAttn" in t else 0 for d, t in zip(per_block, types)]

    lpb, n = config.layers_per_block, len(config.block_out_channels)
    down = depths(config.transformer_layers_per_block, config.down_block_types)
    up = depths(list(reversed(config.transformer_layers_per_block))
                if isinstance(config.transformer_layers_per_block, (list, tuple))
                else config.transformer_layers_per_block, config.up_block_types)
    out: dict[str, str] = {}

    def attention(src: str, dst: str, depth: int) -> None:
        for name in _COMFY_ATTENTION:
            out[f"{src}.{name}"] = f"{dst}.{name}"
        for t in range(depth):
            for name in _COMFY_TRANSFORMER:
                out[f"{src}.transformer_blocks.{t}.{name}"] = f"{dst}.transformer_blocks.{t}.{name}"

    for x in range(n):
        slot = 1 + (lpb + 1) * x
        for i in range(lpb):
            for sgm, diff in _COMFY_RESNET.items():
                out[f"down_blocks.{x}.resnets.{i}.{diff}"] = f"input_blocks.{slot}.0.{sgm}"
            if down[x]:
                attention(f"down_blocks.{x}.attentions.{i}", f"input_blocks.{slot}.1", down[x])
            slot += 1
        out[f"down_blocks.{x}.downsamplers.0.conv"] = f"input_blocks.{slot}.0.op"
    mid_depth = config.transformer_layers_per_block[-1] if isinstance(
        config.transformer_layers_per_block, (list, tuple)) else config.transformer_layers_per_block
    attention("mid_block.attentions.0", "middle_block.1", mid_depth)
    for i, slot in enumerate((0, 2)):
        for sgm, diff in _COMFY_RESNET.items():
            out[f"mid_block.resnets.{i}.{diff}"] = f"middle_block.{slot}.{sgm}"
    for x in range(n):
        slot = (lpb + 1) * x
        for i in range(lpb + 1):
            part = 1
            for sgm, diff in _COMFY_RESNET.items():
                out[f"up_blocks.{x}.resnets.{i}.{diff}"] = f"output_blocks.{slot}.0.{sgm}"
            if up[x]:
                part += 1
                attention(f"up_blocks.{x}.attentions.{i}", f"output_blocks.{slot}.1", up[x])
            if i == lpb:
                out[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{slot}.{part}.conv"
            slot += 1
    out |= _COMFY_BASIC
    return out


def comfyui_key_map(original: dict[str, torch.Size], unet_config, text_encoders: dict[str, dict[str, torch.Size]]
                    ) -> dict[str, torch.Size]:
    """File module name -> the weight shape ComfyUI applies it to. ``text_encoders``: ComfyUI's
    encoder name ("clip_l", "clip_h", "clip_g") -> its weights in transformers' layout."""
    unet = {k[len("model.diffusion_model."):-len(".weight")]: torch.Size(v) for k, v in original.items()
            if k.startswith("model.diffusion_model.") and k.endswith(".weight")}
    out = {f"lora_unet_{path.replace('.', '_')}": shape for path, shape in unet.items()}
    for diffusers_path, path in comfyui_unet_modules(unet_config).items():
        if path in unet:
            out[f"lora_unet_{diffusers_path.replace('.', '_')}"] = unet[path]
    has_clip_l = "clip_l" in text_encoders
    for name, weights in text_encoders.items():
        prefixes = ["lora_te2_"] if name == "clip_g" and has_clip_l else ["lora_te_", "lora_te1_"]
        for key, shape in weights.items():
            m = re.fullmatch(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)\.weight", key)
            if m and m[2] in _COMFY_CLIP:
                for prefix in prefixes:
                    out[f"{prefix}text_model_encoder_layers_{m[1]}_{m[2].replace('.', '_')}"] = torch.Size(shape)
    return out


def comfyui_problems(modules: dict[str, torch.Size], key_map: dict[str, torch.Size]) -> list[str]:
    problems = []
    for module, delta in modules.items():
        if module not in key_map:
            problems.append(f"{module}: lora key not loaded")
        elif delta.numel() != key_map[module].numel():
            problems.append(f"{module}: {tuple(delta)} does not fit {tuple(key_map[module])}")
    return problems


# ---------------------------------------------------------------------------------------- Flux.1

def comfyui_flux_to_original(transformer) -> dict[str, tuple[str, int, int]]:
    """ComfyUI's Flux table (its ``flux_to_diffusers``): each diffusers linear of the blocks ->
    (original weight, first row, rows). The original fuses q, k, v of a double block's image and
    text attention into ``qkv`` and a single block's q, k, v and MLP input into ``linear1``."""
    h = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].mlp_hidden_dim if len(transformer.single_transformer_blocks) else 4 * h
    out: dict[str, tuple[str, int, int]] = {}
    for i in range(len(transformer.transformer_blocks)):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, (q, c) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            out[f"{src}.attn.{q}"] = (f"{dst}.img_attn.qkv", j * h, h)
            out[f"{src}.attn.{c}"] = (f"{dst}.txt_attn.qkv", j * h, h)
        for diff, orig, rows in (("attn.to_out.0", "img_attn.proj", h), ("attn.to_add_out", "txt_attn.proj", h),
                                 ("norm1.linear", "img_mod.lin", 6 * h), ("norm1_context.linear", "txt_mod.lin", 6 * h),
                                 ("ff.net.0.proj", "img_mlp.0", 4 * h), ("ff.net.2", "img_mlp.2", h),
                                 ("ff_context.net.0.proj", "txt_mlp.0", 4 * h), ("ff_context.net.2", "txt_mlp.2", h)):
            out[f"{src}.{diff}"] = (f"{dst}.{orig}", 0, rows)
    for i in range(len(transformer.single_transformer_blocks)):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, q in enumerate(("to_q", "to_k", "to_v")):
            out[f"{src}.attn.{q}"] = (f"{dst}.linear1", j * h, h)
        out[f"{src}.proj_mlp"] = (f"{dst}.linear1", 3 * h, mlp)
        out[f"{src}.norm.linear"] = (f"{dst}.modulation.lin", 0, 3 * h)
        out[f"{src}.proj_out"] = (f"{dst}.linear2", 0, h)
    return out


def flux_original_shapes(transformer) -> dict[str, torch.Size]:
    """The original (BFL) checkpoint's block weights and shapes, assembled by ComfyUI's table from
    the diffusers model (a fused weight: all its parts' rows, the parts' input width)."""
    modules = dict(transformer.named_modules())
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for diff, (orig, start, n) in comfyui_flux_to_original(transformer).items():
        assert modules[diff].out_features == n, f"{diff}: {modules[diff].out_features} rows, ComfyUI expects {n}"
        rows[orig] = max(rows.get(orig, 0), start + n)
        cols[orig] = modules[diff].in_features
    return {orig: torch.Size((rows[orig], cols[orig])) for orig in rows}


def comfyui_flux_key_map(transformer) -> dict[str, torch.Size]:
    """ComfyUI's names for a Flux model's weights (kohya's: ``lora_unet_`` + the original path
    with dots as underscores; diffusers' ``transformer.`` names, which patch a part of a fused
    weight) -> the shape the patch must have."""
    out = {f"lora_unet_{orig.replace('.', '_')}": shape for orig, shape in flux_original_shapes(transformer).items()}
    modules = dict(transformer.named_modules())
    for diff in comfyui_flux_to_original(transformer):
        out[f"transformer.{diff}"] = modules[diff].weight.shape
    return out


def kohya_flux_load(original: dict[str, torch.Size], state: dict[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kohya sd-scripts' Flux LoRA loader (networks/lora_flux, create_network_from_weights), as
    rules: a module's rank is its ``lora_down`` rows and its alpha the ``alpha`` key of the same
    name (the part before the first dot); a LoRA module exists for each original Linear of a
    double or single block whose ``lora_unet_`` name has a rank; the file is then loaded
    non-strictly, so a key of no module is dropped in silence, and a shape that differs fails.
    Returns each module's change (alpha / rank x up @ down, the fused weight's) and the problems."""
    dims: dict[str, int] = {}
    alphas: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "." not in key:
            continue
        name = key.split(".")[0]
        if "alpha" in key:
            alphas[name] = value
        elif "lora_down" in key:
            dims[name] = value.shape[0]
    expected: dict[str, torch.Size] = {}
    problems: list[str] = []
    for orig, shape in original.items():
        if not orig.startswith(("double_blocks.", "single_blocks.")) or len(shape) != 2:
            continue  # kohya's targets: the Linear children of DoubleStreamBlock / SingleStreamBlock
        name = "lora_unet_" + orig.replace(".", "_")
        if name not in dims:
            continue
        if name not in alphas:
            problems.append(f"{name}: no alpha (kohya's loader fails with a KeyError)")
            continue
        expected[f"{name}.lora_down.weight"] = torch.Size((dims[name], shape[1]))
        expected[f"{name}.lora_up.weight"] = torch.Size((shape[0], dims[name]))
        expected[f"{name}.alpha"] = torch.Size(())
    for key, value in state.items():
        if key not in expected:
            problems.append(f"{key}: no module of kohya's Flux network has it (dropped without a word)")
        elif value.shape != expected[key]:
            problems.append(f"{key}: {tuple(value.shape)}, kohya's module has {tuple(expected[key])}")
    problems += [f"{key}: missing (kohya's module keeps its initial value)" for key in expected if key not in state]
    deltas = {name: float(alphas[name]) / dims[name] * state[f"{name}.lora_up.weight"].float()
              @ state[f"{name}.lora_down.weight"].float()
              for name in dims if f"{name}.alpha" in expected and not problems}
    return deltas, problems


# -------------------------------------------------------------------------------------- file modules

def module_deltas(state: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    """Each file module's weight change shape, computed as the consumers compute it (works on
    meta tensors: shapes only). LoRA: up x down; LoHa: (w1a x w1b) * (w2a x w2b); LoKr:
    kron(w1, w2) with either side given whole or as a low-rank pair."""
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, part = key.partition(".")
        by_module.setdefault(module, {})[part] = value
    out = {}
    for module, t in by_module.items():
        if "lora_up.weight" in t:
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            out[module] = torch.Size((up.shape[0], *down.shape[1:]))
        elif "hada_w1_a" in t:
            out[module] = (t["hada_w1_a"] @ t["hada_w1_b"]).shape
        elif any(k.startswith("lokr_w1") for k in t):
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"]
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            out[module] = torch.kron(w1, w2).shape
        else:
            raise AssertionError(f"{module}: no weights of a known kind ({sorted(t)})")
    return out


# ------------------------------------------------------------------------------- checkpoint layout

def a1111_checkpoint_config(shapes: dict[str, torch.Size]) -> str:
    """Which model config A1111 builds for a single-file checkpoint, decided from its keys and
    shapes in the order A1111 tries them (SD 2 v-prediction is then told from the weights)."""
    unet_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if "conditioner.embedders.1.model.ln_final.weight" in shapes:
        return "sdxl-inpainting" if unet_in[1] == 9 else "sdxl"
    if "conditioner.embedders.0.model.ln_final.weight" in shapes:
        return "sdxl-refiner"
    open_clip = shapes.get("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight")
    if open_clip is not None and open_clip[1] == 1024:
        return "sd2-inpainting" if unet_in[1] == 9 else "sd2"
    if unet_in is not None and unet_in[1] in (8, 9):
        return {9: "v1-inpainting", 8: "instruct-pix2pix"}[unet_in[1]]
    return "v1"


def comfyui_checkpoint_model(shapes: dict[str, torch.Size]) -> str:
    """Which model ComfyUI detects from a checkpoint's UNet keys: the UNet settings it reads
    (width, text width, linear projections, class-embedding input, transformer depth per input
    block) matched against SD 1.5, SD 2.x and SDXL's."""
    unet = {k[len("model.diffusion_model."):]: v for k, v in shapes.items() if k.startswith("model.diffusion_model.")}
    depth, block = [], 1
    while any(k.startswith(f"input_blocks.{block}.") for k in unet):
        depth.append(len({k.split(".")[4] for k in unet if k.startswith(f"input_blocks.{block}.1.transformer_blocks.")}))
        block += 1
    depth = [d for i, d in enumerate(depth) if f"input_blocks.{i + 1}.0.op.weight" not in unet]  # drop downsamplers
    to_k = next(v for k, v in sorted(unet.items()) if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in sorted(unet.items()) if k.endswith(".1.proj_in.weight"))
    settings = {"model_channels": unet["input_blocks.0.0.weight"][0], "context_dim": to_k[1],
                "use_linear_in_transformer": len(proj_in) == 2,
                "adm_in_channels": unet["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in unet else None}
    models = {"SD15": {"context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
                       "adm_in_channels": None},
              "SD20": {"context_dim": 1024, "model_channels": 320, "use_linear_in_transformer": True,
                       "adm_in_channels": None},
              "SDXL": {"model_channels": 320, "use_linear_in_transformer": True, "context_dim": 2048,
                       "adm_in_channels": 2816, "transformer_depth": [0, 0, 2, 2, 10, 10]}}
    settings["transformer_depth"] = depth
    found = [name for name, want in models.items() if all(settings[k] == v for k, v in want.items())]
    return found[0] if len(found) == 1 else f"none of them: {settings}"
