"""ImageNet weights of VMamba-Tiny (v0) for the 2D encoder, from a local file the user names. The paper's 2D model
(paper §3.4) builds on Swin-UMamba, which starts from these weights.

The file is VMamba's ``vssmtiny_dp01_ckpt_epoch_292.pth`` (state dict under the key ``model``; a bare state dict
is accepted too). It is named by the environment variable ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS`` as an absolute path;
nothing is ever downloaded and no path relative to the working directory is used. It is read with
``torch.load(..., weights_only=True)``; classes and functions the file names outside torch's allowlist (VMamba's
training checkpoints also hold a config object) are replaced by an inert placeholder, so no code named by the file
runs.

Key map, VMamba checkpoint -> ``VMambaEncoder2D``:

==========================================================  ======================================
``patch_embed.proj.*``, ``patch_embed.norm.*``              same names (skipped when the network's
                                                            input channels differ from the file's)
``layers.i.blocks.j.ln_1.*``                                ``stages.i.j.norm.*``
``layers.i.blocks.j.self_attention.in_proj.weight``         ``stages.i.j.mixer.in_proj.weight``
``layers.i.blocks.j.self_attention.conv2d.*``               ``stages.i.j.mixer.extractor.conv.*``
``...self_attention.x_proj_weight``                         ``...mixer.ssm.x_proj_weight``
``...self_attention.dt_projs_weight`` / ``dt_projs_bias``   ``...mixer.ssm.dt_proj_weight`` / ``dt_proj_bias``
``...self_attention.A_logs`` / ``Ds``                       ``...mixer.ssm.A_log`` / ``D``
``...self_attention.out_norm.*`` / ``out_proj.weight``      ``...mixer.out_norm.*`` / ``out_proj.weight``
``layers.i.downsample.*``                                   ``merges.i.*``
``head.*``, ``norm.*``                                      skipped (classifier and its final norm)
==========================================================  ======================================
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_ENV_VAR = "LOGVMAMBA_VMAMBA_TINY_WEIGHTS"
CHECKPOINT_FILE_NAME = "vssmtiny_dp01_ckpt_epoch_292.pth"

_MIXER_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "conv2d.weight": "extractor.conv.weight",
    "conv2d.bias": "extractor.conv.bias",
    "x_proj_weight": "ssm.x_proj_weight",
    "dt_projs_weight": "ssm.dt_proj_weight",
    "dt_projs_bias": "ssm.dt_proj_bias",
    "A_logs": "ssm.A_log",
    "Ds": "ssm.D",
    "out_norm.weight": "out_norm.weight",
    "out_norm.bias": "out_norm.bias",
    "out_proj.weight": "out_proj.weight",
}
_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_DOWNSAMPLE = re.compile(r"layers\.(\d+)\.downsample\.(.+)")
_CLASSIFIER = re.compile(r"(head|norm)\..+")


def encoder_name(checkpoint_key: str) -> str | None:
    """The ``VMambaEncoder2D`` state-dict name of a VMamba v0 checkpoint key; None for keys with no counterpart
    (the classifier ``head.*``, the final ``norm.*``, anything unknown)."""
    if checkpoint_key.startswith("patch_embed."):
        return checkpoint_key
    downsample = _DOWNSAMPLE.fullmatch(checkpoint_key)
    if downsample:
        return f"merges.{downsample[1]}.{downsample[2]}"
    block = _BLOCK.fullmatch(checkpoint_key)
    if block is None:
        return None
    stage, index, rest = block.groups()
    if rest.startswith("ln_1."):
        return f"stages.{stage}.{index}.norm.{rest[len('ln_1.'):]}"
    if rest.startswith("self_attention.") and rest[len("self_attention."):] in _MIXER_NAMES:
        return f"stages.{stage}.{index}.mixer.{_MIXER_NAMES[rest[len('self_attention.'):]]}"
    return None


def weights_path_from_environment(environ: Mapping[str, str] | None = None, required: bool = False) -> Path | None:
    """The checked path named by ``LOGVMAMBA_VMAMBA_TINY_WEIGHTS``, or None when it is unset and not ``required``.

    Raises ValueError (unset but required, or a relative path) or FileNotFoundError (no such file).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(WEIGHTS_ENV_VAR, "").strip()
    if not value:
        if required:
            raise ValueError(f"this trainer needs VMamba-Tiny's ImageNet weights: download {CHECKPOINT_FILE_NAME} "
                             f"from VMamba's release page yourself and set {WEIGHTS_ENV_VAR} to its absolute path "
                             "(nothing is downloaded for you). To train without them, use a trainer that does not "
                             "require them (e.g. nnUNetTrainerSwinUMambaLoG).")
        return None
    return check_weights_file(value)


def check_weights_file(path: str | Path) -> Path:
    """``path`` as a Path after checking that it is absolute and an existing file."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        raise ValueError(f"{WEIGHTS_ENV_VAR}={str(path)!r} is a relative path; give the absolute path of "
                         f"{CHECKPOINT_FILE_NAME} (relative paths would depend on the working directory).")
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_ENV_VAR} names {path}, which is not an existing file; check the path "
                                f"(it should be VMamba's {CHECKPOINT_FILE_NAME}).")
    return path


class _InertObject:
    """Stand-in for every class or function a checkpoint names outside torch's weights-only allowlist (e.g. the
    training config object saved next to the weights): unpickling builds this instead, so no code named by the
    file ever runs, and the content is discarded. Objects created without arguments (dict subclasses, plain
    objects) become an empty OrderedDict, which takes the items and attributes the file sets on them."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict() if not args else super().__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _load_weights_only(path: Path):
    """``torch.load(path, weights_only=True)`` on CPU; foreign globals (if any) are replaced by ``_InertObject``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not foreign:
            raise
        with torch.serialization.safe_globals([(_InertObject, name) for name in foreign]):
            return torch.load(path, map_location="cpu", weights_only=True)


def read_vmamba_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a VMamba checkpoint file: the ``model`` entry, or the file's dict if it holds tensors
    directly. Loaded on CPU with ``weights_only=True``; objects of other classes in the file (VMamba's training
    checkpoints also hold the optimizer state and the config) are never constructed, only skipped. Raises
    ValueError when the file is not such a checkpoint."""
    path = check_weights_file(path)
    try:
        content = _load_weights_only(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint of tensors ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); it should be VMamba's "
                         f"{CHECKPOINT_FILE_NAME}.") from error
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (neither under 'model' nor at the top level); it "
                         f"should be VMamba's {CHECKPOINT_FILE_NAME}.")
    return state


@dataclass
class EncoderWeights:
    """The outcome of matching a VMamba checkpoint against an encoder.

    tensors: encoder state-dict name -> checkpoint tensor, for every tensor that will be copied.
    skipped: checkpoint key -> why it is not used.
    missing: encoder tensors not copied (absent from the checkpoint, or a skipped patch embedding); they keep
        their initialisation.
    """

    tensors: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def copy_into(self, encoder: nn.Module) -> None:
        """Copy every matched tensor into ``encoder`` (in place, keeping its dtype and device)."""
        targets = encoder.state_dict()
        with torch.no_grad():
            for name, value in self.tensors.items():
                targets[name].copy_(value)

    def summary(self) -> str:
        """Human-readable report: counts of loaded / skipped / missing tensors and the names of the latter two."""
        n_values = sum(t.numel() for t in self.tensors.values())
        total = len(self.tensors) + len(self.missing)
        lines = [f"VMamba-Tiny ImageNet weights: loaded {len(self.tensors)} of {total} encoder tensors "
                 f"({n_values:,} values); skipped {len(self.skipped)} checkpoint tensors; missing {len(self.missing)}."]
        lines += [f"  skipped {key}: {reason}" for key, reason in sorted(self.skipped.items())]
        lines += [f"  missing {name}: keeps its initialisation" for name in self.missing]
        return "\n".join(lines)


def match_vmamba_checkpoint(encoder: nn.Module, state: Mapping[str, Tensor]) -> EncoderWeights:
    """Match a VMamba v0 state dict against a ``VMambaEncoder2D`` with the key map of this module.

    The patch embedding is skipped when its input channels differ from the file's (it keeps its initialisation).
    Raises ValueError when a mapped tensor has another shape (the file is not VMamba-Tiny v0, or the encoder's widths
    or depths differ) or when no tensor matches at all.
    """
    targets = encoder.state_dict()
    result = EncoderWeights()
    mismatched = []
    file_channels = state["patch_embed.proj.weight"].shape[1] if "patch_embed.proj.weight" in state else None
    own_channels = targets["patch_embed.proj.weight"].shape[1]
    for key, value in state.items():
        name = encoder_name(key)
        if name is None or name not in targets:
            reason = "classifier head / final norm" if _CLASSIFIER.fullmatch(key) else "no counterpart in the encoder"
            result.skipped[key] = reason
        elif key.startswith("patch_embed.") and file_channels != own_channels:
            result.skipped[key] = (f"patch embedding for {file_channels} input channels, the network has "
                                   f"{own_channels} (trained from its initialisation)")
        elif tuple(value.shape) != tuple(targets[name].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {name} {tuple(targets[name].shape)}")
        else:
            result.tensors[name] = value
    if mismatched:
        raise ValueError(f"{len(mismatched)} tensors of the checkpoint do not fit the encoder, e.g. "
                         f"{'; '.join(mismatched[:3])}. The file must be VMamba-Tiny v0 ({CHECKPOINT_FILE_NAME}) and "
                         "the encoder VMamba-Tiny (widths 96-768, depths 2, 2, 9, 2).")
    if not result.tensors:
        raise ValueError(f"no tensor of the checkpoint matches the encoder (keys like {list(state)[:3]}); it should "
                         f"be VMamba-Tiny v0's {CHECKPOINT_FILE_NAME}.")
    result.missing = [name for name in targets if name not in result.tensors]
    return result
