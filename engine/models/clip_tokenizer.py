"""A real CLIP BPE tokenizer built offline.

Tiny test models and offline single-file loading both need the genuine CLIP vocabulary (token ids
must match what SD checkpoints were trained with), but we cannot download ``openai/clip-vit-large-patch14``.
The ``open_clip_torch`` wheel ships OpenAI's original BPE merge list; we turn it into the
``vocab.json`` + ``merges.txt`` pair that transformers' ``CLIPTokenizer`` reads, ordering the vocab the way
OpenAI's reference tokenizer does so the ids are identical.

The wheel must be installed WITHOUT dependencies (it would pull torchvision):
``pip install --no-deps open_clip_torch``. We only read its data file and never import it.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps exactly this many merges (lines 1..48894 of the file)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_INSTALL_HINT = "pip install --no-deps open_clip_torch"


def bpe_source_path() -> Path:
    """Path of the gzipped BPE merges inside the open_clip package, found without importing it."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / BPE_FILE
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        "The CLIP tokenizer vocabulary was not found. It ships inside the open_clip_torch wheel; install it "
        f"without its dependencies (they would pull torchvision): `{_INSTALL_HINT}`"
    )


def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order: printable bytes first, then the shifted ones (order matters for ids)


def build_vocab_and_merges(bpe_gz: Path) -> tuple[dict[str, int], list[str]]:
    """Reproduce OpenAI CLIP's vocabulary order: bytes, bytes+'</w>', merges, then the two specials."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    chars = list(byte_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocab built from {bpe_gz} has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer_files(out_dir: Path, pad_token: str = EOS) -> Path:
    """Write a folder that ``CLIPTokenizer.from_pretrained(out_dir)`` loads (SD 1.x settings;
    ``pad_token="!"`` for the OpenCLIP encoders of SD 2.x and SDXL's second one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges(bpe_source_path())
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        **specials,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return out_dir


def _cache_root() -> Path:
    try:
        from engine.paths import cache_dir

        root = cache_dir() / "clip_tokenizer"
        root.parent.mkdir(parents=True, exist_ok=True)
        if os.access(root.parent, os.W_OK):
            return root
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "loraforge_clip_tokenizer"


def clip_tokenizer_dir() -> Path:
    """Folder with the tokenizer files, built once and reused (written to a temp dir then renamed)."""
    target = _cache_root()
    if all((target / f).is_file() for f in _FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".clip_tok.", dir=target.parent))
    try:
        write_clip_tokenizer_files(staging)
        try:
            os.replace(staging, target)  # atomic; fails if another process won the race
        except OSError:
            if not all((target / f).is_file() for f in _FILES):
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_clip_tokenizer():
    """A fresh SD 1.x CLIP tokenizer (vocab 49408, 77 tokens, pad = <|endoftext|>), built offline.

    The files are cached on disk; the object is not, because textual inversion adds tokens to it.
    """
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()))
