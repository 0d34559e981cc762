"""Put the training method into a loaded base: what learns, and in which precision.

LoRA injects peft layers, LyCORIS hooks lycoris modules, a hypernetwork hooks the attention
inputs, Textual Inversion opens the embedding table, a full fine-tune unfreezes the weights.
SDXL has two text encoders: LoRA/LyCORIS train both (``lora_te1`` / ``lora_te2``), TI learns a
vector set in each (``clip_l`` / ``clip_g``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.training_utils import cast_training_params

from engine.config import JobConfig
from engine.i18n import Explained
from engine.models.loader import LoadedModel
from engine.networks import lora, lycoris_net
from engine.networks.hypernetwork import Hypernetwork, widths_in_unet
from engine.networks.textual_inversion import TextualInversion

SDXL_METHODS = ("lora", *lycoris_net.ALGO, "textual_inversion", "dreambooth")


class MethodError(Explained, ValueError):
    """The method cannot be set up on this base; the message says why."""


@dataclass
class MethodParts:
    unet_params: list[torch.nn.Parameter]
    te_params: list[torch.nn.Parameter]
    ti: TextualInversion | None = None
    network: torch.nn.Module | None = None  # LyCORIS / hypernetwork modules (hooked into the base)


def attach_method(cfg: JobConfig, model: LoadedModel, train_te: bool, device) -> MethodParts:
    kind, net = cfg.network.type, cfg.network
    if model.is_sdxl and kind not in SDXL_METHODS:
        raise MethodError(f"network.type = {kind!r} is not available for SDXL yet "
                          f"(SDXL trains {', '.join(SDXL_METHODS)})", "method_sdxl", kind=kind,
                          methods=", ".join(SDXL_METHODS))
    tes = model.text_encoders
    if kind in ("textual_inversion", "dreamartist"):  # only our rows of the table learn
        negative = ((net.negative_num_vectors, net.negative_init_text) if kind == "dreamartist"
                    else None)
        ti = TextualInversion(model, net.token, net.num_vectors, net.init_text, net.template,
                              net.custom_templates, negative=negative)
        for te in tes:
            te.to(device)  # the resized embedding tables
        return MethodParts([], [p.requires_grad_(True) for p in ti.parameters], ti=ti)
    if kind == "lora":
        unet_params = lora.inject_lora(model.unet, lora.unet_targets(model.unet, net), net.dropout)
        te_params = [p for te in (tes if train_te else [])
                     for p in lora.inject_lora(te, lora.text_encoder_targets(te, net), net.dropout)]
        cast_training_params([model.unet, *tes], dtype=torch.float32)
        return MethodParts(unet_params, te_params)
    if kind in lycoris_net.ALGO:  # the network's own modules learn, in fp32
        network = lycoris_net.create_network(model.unet, tes if train_te else None, net)
        network.to(device, dtype=torch.float32)
        return MethodParts([p for m in network.unet_loras for p in m.parameters() if p.requires_grad],
                           [p for m in network.text_encoder_loras for p in m.parameters()
                            if p.requires_grad], network=network)
    if kind == "hypernetwork":  # MLPs on every attention's key/value input, in fp32
        network = Hypernetwork(widths_in_unet(model.unet), net.layer_structure, net.activation,
                               net.layer_norm, net.activate_output, net.dropout_structure,
                               net.weight_init).to(device)
        network.attach(model.unet)
        return MethodParts(list(network.parameters()), [], network=network)
    # full fine-tune: every weight learns, kept in fp32 (autocast does the half math)
    return MethodParts(list(model.unet.requires_grad_(True).parameters()),
                       [p for te in (tes if train_te else []) for p in te.requires_grad_(True).parameters()])
