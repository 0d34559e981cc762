"""Find the GPU and its memory, then choose a preset tier (presets/tiers/<tier>.toml).

The probe asks PyTorch first, because PyTorch is what will train. When this PyTorch cannot see a
GPU but ``nvidia-smi`` can, the usual cause is a CPU-only PyTorch wheel; we then report the card
and tell the user how to fix it, but pick the ``cpu`` tier because that is where training would
run. Every outside dependency (the torch module, ``subprocess.run``) is a parameter so tests can
feed in fake machines.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

from engine.i18n import EN, Translator

GIB = 1024 ** 3
NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]

# (tier, lowest reported GiB, size class in words). Drivers report a little less than the size
# printed on the box (an "8 GB" card shows 7.6-8.0 GiB, a "16 GB" T4 about 14.6 GiB, a 10 GB 3080
# 9.8 GiB), so each bound sits well below the marketing number of its class.
VRAM_TIERS: tuple[tuple[str, float, str], ...] = (
    ("24gb+", 22.0, "24 GB or more"),
    ("16gb", 14.0, "16–24 GB"),
    ("12gb", 10.5, "12–16 GB"),
    ("8gb", 7.0, "8–12 GB"),
    ("6gb", 5.0, "6–8 GB"),
    ("4gb", 3.5, "4–6 GB"),
)
MIN_GPU_GIB = VRAM_TIERS[-1][1]
TIER_NAMES: tuple[str, ...] = ("cpu",) + tuple(name for name, _, _ in reversed(VRAM_TIERS))


@dataclass
class GpuRow:
    """One line of ``nvidia-smi`` output."""
    name: str
    vram_gib: float


@dataclass
class HardwareInfo:
    backend: Literal["cuda", "mps", "cpu"] = "cpu"
    gpu_name: Optional[str] = None
    vram_gib: Optional[float] = None          # memory of GPU 0, the one training uses
    gpu_count: int = 0
    source: Literal["torch", "nvidia-smi", "none"] = "none"
    cuda_available: bool = False
    bf16_supported: bool = False              # native bf16 (Ampere or newer), not emulation
    compute_capability: Optional[tuple[int, int]] = None
    notes: list[str] = field(default_factory=list)
    torch_version: Optional[str] = None       # None: PyTorch missing or broken
    torch_build: Literal["cuda", "rocm", "cpu", "missing"] = "missing"
    torch_cuda_version: Optional[str] = None  # CUDA (or HIP) version the wheel was built with


# A text of the ``tier.`` catalogue section: (key, values); a value may itself be such a pair.
Words = tuple[str, dict[str, Any]]


def _say(t: Translator, words: Words) -> str:
    key, values = words
    return t(f"tier.{key}", **{k: _say(t, v) if isinstance(v, tuple) else v for k, v in values.items()})


@dataclass
class TierChoice:
    name: str
    # why, as catalogue texts (engine/locales, section [tier]) said one after the other, so the web
    # app can say it in its own language; ``reason`` is the English sentence
    why: list[Words]
    # Hardware-specific corrections layered over the tier file (still under the user's own values),
    # e.g. fp16 instead of bf16 on a 24 GB card without bf16.
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self, t: Translator = EN) -> str:
        """The reason in ``t``'s language."""
        return "".join(_say(t, words) for words in self.why)

    @property
    def reason(self) -> str:
        return self.describe(EN)


def parse_nvidia_smi(text: str) -> list[GpuRow]:
    """Parse ``name, memory.total`` CSV lines (MiB, no units); lines that do not parse are skipped."""
    rows = []
    for line in (text or "").splitlines():
        name, sep, mem = line.strip().rpartition(",")
        name = name.strip()
        if not sep or not name:
            continue
        try:
            mib = float(mem.strip())
        except ValueError:  # "[N/A]", error text, a header line
            continue
        if mib > 0:
            rows.append(GpuRow(name=name, vram_gib=round(mib / 1024, 2)))
    return rows


def query_nvidia_smi(run: Callable[..., Any] = subprocess.run,
                     timeout: float = 10.0) -> tuple[list[GpuRow], Optional[str]]:
    """Run nvidia-smi; return (gpus, None) or ([], why it gave nothing)."""
    try:
        proc = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return [], "nvidia-smi not found"
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi did not answer within {timeout:g} s"
    except OSError as err:
        return [], f"nvidia-smi could not run: {err}"
    if proc.returncode != 0:
        first = ((proc.stderr or proc.stdout or "").strip().splitlines() or [""])[0]
        return [], f"nvidia-smi failed (exit {proc.returncode}) {first}".rstrip()
    rows = parse_nvidia_smi(proc.stdout)
    return rows, None if rows else "nvidia-smi listed no GPUs"


def _import_torch() -> Any:
    try:
        import torch
        return torch
    except Exception:  # noqa: BLE001 - a broken install must not stop the probe
        return None


def _bf16_native(cuda: Any, capability: Optional[tuple[int, int]]) -> bool:
    try:
        try:
            ok = bool(cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch without the keyword
            ok = bool(cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001
        return False
    return ok and (capability is None or capability[0] >= 8)


def _probe_torch_cuda(torch: Any, info: HardwareInfo) -> bool:
    cuda = torch.cuda
    try:
        if not cuda.is_available():
            return False
        count = int(cuda.device_count())
        props = cuda.get_device_properties(0)
    except Exception as err:  # noqa: BLE001 - e.g. driver too old for this torch
        info.notes.append(f"PyTorch could not use CUDA: {err}")
        return False
    cap = None
    try:
        cap = tuple(int(x) for x in cuda.get_device_capability(0))
    except Exception:  # noqa: BLE001
        pass
    info.backend, info.source, info.cuda_available = "cuda", "torch", True
    info.gpu_name = str(props.name)
    info.vram_gib = round(props.total_memory / GIB, 2)
    info.gpu_count = count
    info.compute_capability = cap  # type: ignore[assignment]
    info.bf16_supported = _bf16_native(cuda, cap)
    if info.torch_build == "rocm":
        info.notes.append("PyTorch is a ROCm (AMD) build; the CUDA API names still apply")
    if count > 1:
        info.notes.append(f"{count} GPUs found; training uses the first one (GPU 0)")
    return True


def _mps_available(torch: Any) -> bool:
    try:
        return bool(torch.backends.mps.is_available())
    except Exception:  # noqa: BLE001 - no mps module on this build
        return False


def _describe_torch(torch: Any, info: HardwareInfo) -> None:
    if torch is None:
        return
    version = getattr(torch, "version", None)
    info.torch_version = str(getattr(torch, "__version__", "unknown"))
    hip, cuda = getattr(version, "hip", None), getattr(version, "cuda", None)
    info.torch_build = "rocm" if hip else "cuda" if cuda else "cpu"
    info.torch_cuda_version = str(hip or cuda) if (hip or cuda) else None


def _gpu_fix(info: HardwareInfo) -> Words:
    return ("fix_cuda" if info.torch_build in ("missing", "cpu") else "fix_driver"), {}


def probe(torch_module: Any = "import", run: Callable[..., Any] = subprocess.run) -> HardwareInfo:
    """What can train here. ``torch_module=None`` means "PyTorch is not installed"."""
    torch = _import_torch() if torch_module == "import" else torch_module
    info = HardwareInfo()
    _describe_torch(torch, info)
    if torch is None:
        info.notes.append("PyTorch is not installed or failed to import")
    elif _probe_torch_cuda(torch, info):
        return info
    elif _mps_available(torch):
        info.backend, info.source, info.gpu_name, info.gpu_count = "mps", "torch", "Apple GPU (Metal)", 1
        info.notes.append("Apple GPU shares system memory; no separate VRAM figure")
        return info
    gpus, why = query_nvidia_smi(run)
    if gpus:
        info.source, info.gpu_name, info.vram_gib = "nvidia-smi", gpus[0].name, gpus[0].vram_gib
        info.gpu_count = len(gpus)
        build = {"missing": "not installed", "cpu": "a CPU-only build"}.get(
            info.torch_build, "a GPU build that cannot reach this GPU")
        info.notes.append(f"nvidia-smi sees {gpus[0].name} but PyTorch is {build}, so training "
                          f"would run on the CPU. To use the GPU, {_say(EN, _gpu_fix(info))}")
        if len(gpus) > 1:
            info.notes.append(f"{len(gpus)} GPUs listed by nvidia-smi; GPU 0 is used")
    elif why and why != "nvidia-smi not found":
        info.notes.append(why)
    return info


def _gpu(info: HardwareInfo) -> str | Words:
    name = info.gpu_name or "GPU"
    return ("gpu_with_vram", {"name": name, "vram": f"{info.vram_gib:.1f}"}) if info.vram_gib is not None else name


def pick_tier(info: HardwareInfo) -> TierChoice:
    """Choose a preset tier from what the probe found; the reason is one plain sentence."""
    gpu = _gpu(info)
    if info.backend == "mps":
        return TierChoice("8gb", [("reason_mps", {"gpu": gpu})],
                          {"optimizer": {"type": "AdamW"}, "training": {"mixed_precision": "no"}})
    if info.backend != "cuda":
        if info.gpu_name and info.source == "nvidia-smi":
            return TierChoice("cpu", [("reason_cpu_unusable", {"gpu": gpu, "fix": _gpu_fix(info)})])
        return TierChoice("cpu", [("reason_cpu", {})])
    vram = info.vram_gib or 0.0
    for name, low, size_class in VRAM_TIERS:
        if vram >= low:
            break
    else:
        return TierChoice("cpu", [("reason_low_vram", {"gpu": gpu, "min": f"{MIN_GPU_GIB:g}"})])
    why: list[Words] = [("reason_gpu", {"gpu": gpu, "tier": name, "size": size_class})]
    overrides: dict[str, Any] = {}
    if name == "24gb+" and not info.bf16_supported:
        overrides = {"training": {"mixed_precision": "fp16"}}
        why.append(("reason_fp16", {}))
    return TierChoice(name, why, overrides)
