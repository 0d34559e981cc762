"""Swap add-on network files on a base held in memory: plain LoRA (peft layers), LyCORIS, an
A1111 hypernetwork, a Textual Inversion embedding (see embedding_apply) or an aesthetic
embedding (see aesthetic_apply).

Plain kohya LoRA / LoCon files (``lora_down``/``lora_up`` only) go through :class:`LoraSwapper`;
files with LoHa / LoKr / CP-decomposed modules need lycoris-lora's modules; embeddings are
recognised by their tensors (``emb_params`` / ``string_to_param``), aesthetic embeddings by
``aesthetic_embedding`` or a ``.pt`` holding a bare tensor; any other ``.pt`` is read as a
hypernetwork (engine/export/file_kind.py decides, in one read). Either way the modules are built
once per file *structure* and later epochs only copy tensors in. Which swapper takes which file
kind comes from the method registry (engine/methods).
"""
from __future__ import annotations

from pathlib import Path

from engine.export.file_kind import read_kind
from engine.export.safetensors_io import load_with_metadata
from engine.generate.aesthetic import AestheticError, AestheticSettings
from engine.generate.aesthetic_apply import AestheticSwapper
from engine.generate.embedding_apply import EmbeddingFileError, EmbeddingSwapper
from engine.generate.lora_apply import LoraFileError, LoraSwapper
from engine.models.loader import LoadedModel
from engine.networks import lycoris_net
from engine.networks.hypernetwork import HypernetworkFileError, load_hypernetwork


class _HookedSwapper:
    """Swappers whose network hooks into the base (LyCORIS, hypernetwork): built once per file
    structure (``injections`` counts builds); the weight is the network's multiplier."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.network = None
        self._signature = None
        self.injections = 0

    def set_weight(self, weight: float) -> None:
        if self.network is None:
            raise RuntimeError("load a network file first")
        self.network.set_multiplier(weight)


class LycorisSwapper(_HookedSwapper):
    """Same interface as LoraSwapper, for files only lycoris-lora can apply.

    A file with DoRA magnitudes (``dora_scale``) is merged into the base's weights instead:
    at weight w A1111 and ComfyUI give ``W + w x (DoRA weight - W)``, while lycoris' own
    multiplier keeps the whole low-rank part at every weight (at 0 it is not the base)."""

    def __init__(self, model: LoadedModel) -> None:
        super().__init__(model)
        self._merged: list | None = None  # [(module, base weight, full weight)] for DoRA files

    def load(self, path: Path) -> None:
        state, meta = load_with_metadata(path)
        signature = frozenset((k, tuple(v.shape)) for k, v in state.items())
        unet, te = self.model.unet, self.model.text_encoders
        self._unmerge()
        try:
            if signature != self._signature:
                if self.network is not None:
                    lycoris_net.unhook(self.network)
                self.network = lycoris_net.network_from_file_state(state, unet, te, meta)
                self._signature = signature
                self.injections += 1
            else:
                lycoris_net.load_file_state(self.network, state, te, unet)
        except (ValueError, KeyError, RuntimeError) as err:  # RuntimeError: lycoris' reload
            raise LoraFileError(f"{Path(path).name}: {err}", "file_problem", name=Path(path).name,
                                error=err) from None
        self.network.to(device=unet.device, dtype=unet.dtype).eval()
        if any(k.endswith(".dora_scale") for k in state):
            self._merged = lycoris_net.full_weights(self.network)
            lycoris_net.unhook(self.network)
            self._signature = None  # the next file builds its modules on the restored base again

    def _unmerge(self) -> None:
        if self._merged is not None:
            lycoris_net.set_merged(self._merged, 0.0)
            self._merged = None

    def set_weight(self, weight: float) -> None:
        if self._merged is not None:
            lycoris_net.set_merged(self._merged, weight)
        else:
            super().set_weight(weight)


class HypernetworkSwapper(_HookedSwapper):
    """A1111 hypernetworks: hooks on the UNet's key/value projections; weight = strength."""

    def load(self, path: Path) -> None:
        try:
            net, _ = load_hypernetwork(Path(path))
        except HypernetworkFileError as err:
            raise LoraFileError.wrapping(err) from None
        signature = (tuple(net.widths), repr(net.settings))
        if signature != self._signature:
            if self.network is not None:
                self.network.detach()
            self.network = net.to(self.model.unet.device)
            self.network.attach(self.model.unet)
            self._signature = signature
            self.injections += 1
        else:
            self.network.load_state_dict(net.state_dict())
        self.network.eval()


def swapper_table() -> dict[str, type]:
    """file kind -> swapper: the training methods' (engine.methods) and the aesthetic embedding's."""
    from engine.methods.base import swapper_table as from_methods

    return {**from_methods(), "aesthetic": AestheticSwapper}


class NetworkSwapper:
    """Picks the swapper from the first file; one comparison holds one kind of file."""

    def __init__(self, model: LoadedModel, aesthetic: AestheticSettings | None = None,
                 local_files_only: bool = False) -> None:
        self.model = model
        self.aesthetic = aesthetic
        self.local_files_only = local_files_only
        self._impl = None

    @property
    def injections(self) -> int:
        return self._impl.injections if self._impl else 0

    @property
    def axis_name(self) -> str:
        """Grid column label: LoRA/LyCORIS "weight", aesthetic "aesthetic weight",
        hypernetwork/embedding "strength"."""
        if isinstance(self._impl, AestheticSwapper):
            return "aesthetic weight"
        return "weight" if isinstance(self._impl, (LoraSwapper, LycorisSwapper)) else "strength"

    @property
    def encode(self):
        """Prompt encoder the pipeline must use (embeddings at a strength, aesthetic
        personalisation), or None."""
        if isinstance(self._impl, (EmbeddingSwapper, AestheticSwapper)):
            return self._impl.encode
        return None

    def prompt_tag(self, name: str, weight: float) -> str:
        """How A1111 writes this network in a prompt (for the PNG ``parameters`` text)."""
        if isinstance(self._impl, (EmbeddingSwapper, AestheticSwapper)):
            return self._impl.prompt_tag(name, weight)
        kind = "hypernet" if isinstance(self._impl, HypernetworkSwapper) else "lora"
        return f"<{kind}:{name}:{weight:g}>"

    def _new(self, kind):
        if kind is AestheticSwapper:
            return kind(self.model, self.aesthetic, self.local_files_only)
        return kind(self.model)

    def load(self, path: Path) -> None:
        found, table = read_kind(path).kind, swapper_table()
        if found in table:
            kind = table[found]
        else:  # the reader of the file's form explains what is wrong with it
            kind = HypernetworkSwapper if Path(path).suffix.lower() == ".pt" else LoraSwapper
        if self._impl is None:
            try:
                self._impl = self._new(kind)
            except AestheticError as err:
                raise LoraFileError.wrapping(err) from None
        elif not isinstance(self._impl, kind):
            raise LoraFileError(f"{Path(path).name}: files of different kinds (LoRA, LoHa/LoKr, "
                                "hypernetwork, embedding, aesthetic embedding) cannot be compared in one grid; "
                                "make one grid per file type", "grid_mixed_kinds", name=Path(path).name)
        try:
            self._impl.load(path)
        except (EmbeddingFileError, AestheticError) as err:
            raise LoraFileError.wrapping(err) from None

    def set_weight(self, weight: float) -> None:
        if self._impl is None:
            raise RuntimeError("load a network file first")
        self._impl.set_weight(weight)
