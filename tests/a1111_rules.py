"""AUTOMATIC1111's checks on a ``.pt`` file before it unpickles it ("safe unpickle"), written
here from its documented behaviour (webui 1.10, modules/safe.py): the zip archive may hold only
``<folder>/data.pkl``, ``<folder>/version`` and ``<folder>/data/<n>`` (exactly one data.pkl),
and the pickle may name only these globals. A file that fails is refused as "may be malicious"
unless the user starts A1111 with --disable-safe-unpickle."""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

MEMBER = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
    ("pytorch_lightning.callbacks", "model_checkpoint"),
    ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
}


class Refused(Exception):
    pass


class _Stand(dict):
    """What an allowed global becomes while checking: takes any arguments and state."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


class _Checker(pickle.Unpickler):
    def persistent_load(self, saved_id):
        if saved_id[0] != "storage":
            raise Refused(f"persistent id {saved_id[0]!r}")
        return None

    def find_class(self, module, name):
        if (module, name) not in GLOBALS:
            raise Refused(f"global '{module}/{name}' is forbidden")
        return _Stand  # never the real thing: this only checks


def check_pt(path: Path) -> str:
    """Raise Refused as A1111 would; return the archive's folder name."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        bad = [n for n in names if not MEMBER.match(n)]
        if bad:
            raise Refused(f"bad file inside {Path(path).name}: {bad[0]}")
        pkls = [n for n in names if DATA_PKL.match(n)]
        if len(pkls) != 1:
            raise Refused(f"{len(pkls)} data.pkl in {Path(path).name}")
        with z.open(pkls[0]) as fh:
            _Checker(fh).load()
        return pkls[0].split("/")[0]
