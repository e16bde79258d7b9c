"""VMamba-Tiny ImageNet weights and the Swin-UMamba-recipe trainers that use them: the key map, loading through the
trainer, bad files, freezing the encoder (also under DDP), the recipe, continuing a training."""

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

import logvmamba_nnunet_trainers as trainers
import tests.ext_trainers_for_tests.tiny_trainers as tiny_trainers
from logvmamba_nnunet.modules.block import DropPath
from logvmamba_nnunet.networks.vmamba_encoder_2d import VMambaEncoder2D
from logvmamba_nnunet.networks.vmamba_pretrained import (
    WEIGHTS_ENV_VAR,
    encoder_name,
    match_vmamba_checkpoint,
    read_vmamba_checkpoint,
    weights_path_from_environment,
)
from logvmamba_nnunet.nnunet.ddp import set_trainable, unwrap_network
from logvmamba_nnunet.nnunet.lr_scheduler import CosineDecayLRScheduler
from tests.plans_factory import plans

VMAMBA_TINY = ((96, 192, 384, 768), (2, 2, 9, 2))
TINY_TRAINER_ENCODER = ((16, 32, 64, 128), (1, 1, 1, 1))  # nnUNetTrainerSwinUMambaLoG_Tiny's encoder
RGB_DATASET_JSON = {"channel_names": {"0": "R", "1": "G", "2": "B"},
                    "labels": {"background": 0, "organ": 1, "lesion": 2}, "numTraining": 4, "file_ending": ".png"}


def vmamba_v0_layout(widths, depths, in_channels: int = 3, d_state: int = 16) -> dict[str, tuple[int, ...]]:
    """Names and shapes of VMamba v0's ImageNet classifier state dict (``VSSM``): ``patch_embed`` (conv k4 + norm),
    ``layers.i.blocks.j`` (``ln_1`` and the SS2D ``self_attention`` with K = 4, E = 2, dt rank ceil(C / 16)),
    ``layers.i.downsample`` (patch merging) for all but the last stage, the final ``norm`` and the ``head``."""
    layout = {"patch_embed.proj.weight": (widths[0], in_channels, 4, 4), "patch_embed.proj.bias": (widths[0],),
              "patch_embed.norm.weight": (widths[0],), "patch_embed.norm.bias": (widths[0],)}
    for i, (c, depth) in enumerate(zip(widths, depths)):
        d, r = 2 * c, math.ceil(c / 16)
        for j in range(depth):
            attention = f"layers.{i}.blocks.{j}.self_attention."
            layout.update({
                f"layers.{i}.blocks.{j}.ln_1.weight": (c,), f"layers.{i}.blocks.{j}.ln_1.bias": (c,),
                attention + "in_proj.weight": (2 * d, c), attention + "conv2d.weight": (d, 1, 3, 3),
                attention + "conv2d.bias": (d,), attention + "x_proj_weight": (4, r + 2 * d_state, d),
                attention + "dt_projs_weight": (4, d, r), attention + "dt_projs_bias": (4, d),
                attention + "A_logs": (4 * d, d_state), attention + "Ds": (4 * d,),
                attention + "out_norm.weight": (d,), attention + "out_norm.bias": (d,),
                attention + "out_proj.weight": (c, d)})
        if i < len(widths) - 1:
            layout.update({f"layers.{i}.downsample.norm.weight": (4 * c,), f"layers.{i}.downsample.norm.bias": (4 * c,),
                           f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c)})
    layout.update({"norm.weight": (widths[-1],), "norm.bias": (widths[-1],), "head.weight": (1000, widths[-1]),
                   "head.bias": (1000,)})
    return layout


def write_fake_vmamba_checkpoint(path: Path, widths, depths, in_channels: int = 3, seed: int = 0) -> dict:
    """A checkpoint file in VMamba's layout ({"model": state dict, ...}) with random tensors; returns the state."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator)
             for k, shape in vmamba_v0_layout(widths, depths, in_channels).items()}
    torch.save({"model": state, "epoch": 292, "max_accuracy": 82.5}, path)
    return state


# The reverse of the key map, written out per tensor kind: encoder name pattern -> VMamba key pattern.
ENCODER_TO_VMAMBA = [
    ("patch_embed.", "patch_embed."), (".norm.", ".ln_1."), (".mixer.in_proj.", ".self_attention.in_proj."),
    (".mixer.extractor.conv.", ".self_attention.conv2d."),
    (".mixer.ssm.x_proj_weight", ".self_attention.x_proj_weight"),
    (".mixer.ssm.dt_proj_weight", ".self_attention.dt_projs_weight"),
    (".mixer.ssm.dt_proj_bias", ".self_attention.dt_projs_bias"), (".mixer.ssm.A_log", ".self_attention.A_logs"),
    (".mixer.ssm.D", ".self_attention.Ds"), (".mixer.out_norm.", ".self_attention.out_norm."),
    (".mixer.out_proj.", ".self_attention.out_proj.")]


def vmamba_key_of(name: str) -> str:
    if name.startswith("merges."):
        _, stage, rest = name.split(".", 2)
        return f"layers.{stage}.downsample.{rest}"
    if name.startswith("patch_embed."):
        return name
    _, stage, block, rest = name.split(".", 3)
    rest = "." + rest
    for ours, theirs in ENCODER_TO_VMAMBA[1:]:
        if rest.startswith(ours):
            return f"layers.{stage}.blocks.{block}{theirs}{rest[len(ours):]}"
    raise AssertionError(f"no VMamba key for {name}")


def make_trainer(cls, monkeypatch, tmp_path, configuration="2d"):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return cls(plans(), configuration, 0, dict(RGB_DATASET_JSON), torch.device("cpu"))


def build(cls, configuration="2d", input_channels=3):
    manager = PlansManager(plans())
    return cls.build_network_architecture(manager, manager.get_configuration(configuration), input_channels, 3, True)


def log_text(trainer) -> str:
    return Path(trainer.log_file).read_text()


def test_key_map():
    assert encoder_name("patch_embed.proj.weight") == "patch_embed.proj.weight"
    assert encoder_name("layers.2.blocks.8.ln_1.bias") == "stages.2.8.norm.bias"
    assert encoder_name("layers.0.blocks.1.self_attention.conv2d.weight") == "stages.0.1.mixer.extractor.conv.weight"
    assert encoder_name("layers.3.blocks.0.self_attention.A_logs") == "stages.3.0.mixer.ssm.A_log"
    assert encoder_name("layers.1.blocks.0.self_attention.dt_projs_bias") == "stages.1.0.mixer.ssm.dt_proj_bias"
    assert encoder_name("layers.2.downsample.reduction.weight") == "merges.2.reduction.weight"
    for key in ("head.weight", "norm.bias", "layers.0.blocks.0.self_attention.x_proj.0.weight", "absolute_pos_embed"):
        assert encoder_name(key) is None


def test_fake_vmamba_tiny_checkpoint_is_copied_completely_through_the_trainer(tmp_path, monkeypatch):
    path = tmp_path / "vssmtiny_dp01_ckpt_epoch_292.pth"
    state = write_fake_vmamba_checkpoint(path, *VMAMBA_TINY)
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(path))
    trainer = make_trainer(trainers.nnUNetTrainerSwinUMambaLoG_ImageNet, monkeypatch, tmp_path)
    trainer.network = build(trainers.nnUNetTrainerSwinUMambaLoG_ImageNet)
    weights = trainer.load_pretrained_encoder(trainer.pretrained_weights_path())
    encoder = trainer.network.encoder.state_dict()
    assert len(encoder) == 208 and len(state) == 212
    for name, tensor in encoder.items():
        torch.testing.assert_close(tensor, state[vmamba_key_of(name)], rtol=0, atol=0)
    assert sorted(weights.skipped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert weights.missing == []
    text = log_text(trainer)
    assert "loaded 208 of 208 encoder tensors (22,122,912 values); skipped 4 checkpoint tensors; missing 0." in text
    assert "skipped head.weight: classifier head / final norm" in text
    assert len(trainer.pretrained_parameter_names) == 208


def test_training_checkpoint_with_foreign_objects_loads_without_running_them(tmp_path):
    """VMamba's training checkpoints also hold the optimizer state and a config object: objects of classes outside
    torch's weights-only allowlist are skipped without being constructed (here a config class that no longer
    exists); a file whose unpickling would run a shell command is refused, and the command never runs."""
    marker = tmp_path / "code_ran"
    (tmp_path / "foreign_config.py").write_text(
        "import os\nclass Config(dict):\n    pass\nclass Payload:\n    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n")
    training, malicious = tmp_path / "training.pth", tmp_path / "malicious.pth"
    code = ("import sys, numpy, torch\nsys.path.insert(0, sys.argv[1])\nimport foreign_config as f\n"
            "model = {'patch_embed.proj.bias': torch.arange(4.0)}\n"
            "torch.save({'model': model, 'config': f.Config(MODEL=f.Config(TYPE='vssm')),\n"
            "            'optimizer': {'state': {}, 'lr': numpy.float64(1e-3)}}, sys.argv[2])\n"
            "torch.save({'model': model, 'payload': f.Payload()}, sys.argv[3])\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(training), str(malicious)], check=True)
    (tmp_path / "foreign_config.py").unlink()
    state = read_vmamba_checkpoint(training)
    assert list(state) == ["patch_embed.proj.bias"]
    torch.testing.assert_close(state["patch_embed.proj.bias"], torch.arange(4.0))
    with pytest.raises(ValueError, match="cannot read .* as a PyTorch checkpoint"):
        read_vmamba_checkpoint(malicious)
    assert not marker.exists()


def test_other_input_channels_skip_the_patch_embedding(tmp_path):
    path = tmp_path / "small.pth"
    write_fake_vmamba_checkpoint(path, *TINY_TRAINER_ENCODER)
    encoder = VMambaEncoder2D(1, *TINY_TRAINER_ENCODER)
    before = encoder.patch_embed.proj.weight.clone()
    weights = match_vmamba_checkpoint(encoder, read_vmamba_checkpoint(path))
    weights.copy_into(encoder)
    embedding = ["patch_embed.norm.bias", "patch_embed.norm.weight", "patch_embed.proj.bias", "patch_embed.proj.weight"]
    assert sorted(weights.missing) == embedding
    assert all("for 3 input channels, the network has 1" in weights.skipped[k] for k in embedding)
    assert len(weights.tensors) == len(encoder.state_dict()) - 4
    torch.testing.assert_close(encoder.patch_embed.proj.weight, before, rtol=0, atol=0)
    assert "missing patch_embed.proj.weight: keeps its initialisation" in weights.summary()


def test_weights_path_checks(tmp_path):
    assert weights_path_from_environment({}) is None
    with pytest.raises(ValueError, match=f"set {WEIGHTS_ENV_VAR} to its absolute path"):
        weights_path_from_environment({}, required=True)
    with pytest.raises(ValueError, match="relative path"):
        weights_path_from_environment({WEIGHTS_ENV_VAR: "weights/vmamba.pth"})
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        weights_path_from_environment({WEIGHTS_ENV_VAR: str(tmp_path / "absent.pth")})
    path = tmp_path / "file.pth"
    path.write_bytes(b"x")
    assert weights_path_from_environment({WEIGHTS_ENV_VAR: f" {path} "}) == path


def test_bad_files_give_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="cannot read .* as a PyTorch checkpoint"):
        read_vmamba_checkpoint(garbage)
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"model": {"epoch": 3}}, no_tensors)
    with pytest.raises(ValueError, match="holds no state dict of tensors"):
        read_vmamba_checkpoint(no_tensors)
    encoder = VMambaEncoder2D(3, *TINY_TRAINER_ENCODER)
    other_model = tmp_path / "other.pth"
    torch.save({"model": {"backbone.conv.weight": torch.ones(3)}}, other_model)
    with pytest.raises(ValueError, match="no tensor of the checkpoint matches the encoder"):
        match_vmamba_checkpoint(encoder, read_vmamba_checkpoint(other_model))
    tiny = tmp_path / "vmamba_tiny.pth"
    write_fake_vmamba_checkpoint(tiny, (32, 64, 128, 256), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="do not fit the encoder.*must be VMamba-Tiny v0"):
        match_vmamba_checkpoint(encoder, read_vmamba_checkpoint(tiny))


def test_missing_or_wrong_weights_stop_before_training(tmp_path, monkeypatch):
    """on_train_start checks the file before it initialises anything (no network, no data loaders)."""
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
    trainer = make_trainer(trainers.nnUNetTrainerSwinUMambaLoG_ImageNet, monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="needs VMamba-Tiny's ImageNet weights"):
        trainer.on_train_start()
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "typo.pth"))
    trainer = make_trainer(trainers.nnUNetTrainerSwinUMambaLoG, monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match="typo.pth"):
        trainer.on_train_start()
    assert not trainer.was_initialized


def test_building_the_network_never_reads_the_weights(tmp_path, monkeypatch):
    """nnUNetv2_predict rebuilds the network with build_network_architecture: that must not need the file."""
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "absent.pth"))
    with torch.device("meta"):
        net = build(trainers.nnUNetTrainerSwinUMambaLoG_ImageNet)
    assert net.encoder.patch_embed.proj.in_channels == 3


def test_without_weights_the_encoder_trains_from_scratch(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
    trainer = make_trainer(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny, monkeypatch, tmp_path)
    trainer.network = build(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny)
    assert trainer.load_pretrained_encoder(trainer.pretrained_weights_path()) is None
    assert trainer.pretrained_parameter_names == []
    assert "is not set): the encoder is trained from its initialisation and never frozen" in log_text(trainer)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, p in module.named_parameters() if not torch.equal(p, before[name])]


def test_encoder_is_frozen_for_the_first_epochs_then_trains(tmp_path, monkeypatch):
    path = tmp_path / "small.pth"
    write_fake_vmamba_checkpoint(path, *TINY_TRAINER_ENCODER)
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(path))
    cls = tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny
    trainer = make_trainer(cls, monkeypatch, tmp_path)
    trainer.network = build(cls)
    for module in trainer.network.modules():  # no randomly dropped branches: every parameter gets a gradient
        if isinstance(module, DropPath):
            module.drop_prob = 0.0
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.load_pretrained_encoder(trainer.pretrained_weights_path())
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 32, 32)).float()
    scales = trainer._get_deep_supervision_scales()
    batch = {"data": torch.randn(2, 3, 32, 32),
             "target": [nn.functional.interpolate(labels, scale_factor=s[0]) for s in scales]}
    encoder, decoder = trainer.network.encoder, trainer.network.decoder

    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    assert trainer.encoder_frozen and not any(p.requires_grad for p in encoder.parameters())
    encoder_before, decoder_before = _snapshot(encoder), _snapshot(decoder)
    trainer.train_step(batch)
    assert _changed(encoder, encoder_before) == []
    assert "levels.0.merge.weight" in _changed(decoder, decoder_before)

    trainer.current_epoch = cls.freeze_encoder_epochs
    trainer.on_train_epoch_start()
    assert not trainer.encoder_frozen and all(p.requires_grad for p in encoder.parameters())
    encoder_before = _snapshot(encoder)
    trainer.train_step(batch)
    changed = _changed(encoder, encoder_before)
    assert all(p.grad is not None for p in encoder.parameters())
    # with random "pretrained" tensors a few SSM skip/decay gradients are ~1e-11: AdamW moves those by less than
    # float32 resolution; every tensor with a real gradient moves
    assert all(name in changed for name, p in encoder.named_parameters() if p.grad.abs().max() > 1e-6)
    assert len(changed) > 0.9 * len(encoder_before)
    text = log_text(trainer)
    assert f"Encoder: {len(encoder_before)} pretrained tensors frozen until epoch 1." in text
    assert f"Encoder: {len(encoder_before)} pretrained tensors trainable." in text


def test_continued_training_keeps_checkpoint_weights_but_freezes_the_same_tensors(tmp_path, monkeypatch):
    path = tmp_path / "small.pth"
    write_fake_vmamba_checkpoint(path, *TINY_TRAINER_ENCODER)
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(path))
    trainer = make_trainer(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny, monkeypatch, tmp_path)
    trainer.network = build(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny)
    before = _snapshot(trainer.network.encoder)
    trainer.current_epoch = 1
    trainer.load_pretrained_encoder(trainer.pretrained_weights_path())
    assert _changed(trainer.network.encoder, before) == []
    assert len(trainer.pretrained_parameter_names) == len(before)
    assert "Continuing at epoch 1: the encoder keeps the checkpoint's weights" in log_text(trainer)


def test_freezing_under_ddp_needs_no_unused_parameter_search(tmp_path):
    """DDP (gloo, one process) registers trainable parameters at construction; set_trainable re-wraps it, so
    frozen parameters are not expected to get gradients and unfrozen ones are synchronised again."""
    dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp(dir=tmp_path)}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        wrapped = nn.parallel.DistributedDataParallel(module)
        frozen = set_trainable(wrapped, ["0.weight", "0.bias"], False)
        assert isinstance(frozen, nn.parallel.DistributedDataParallel) and frozen is not wrapped
        assert frozen.module is module and not frozen.find_unused_parameters
        for _ in range(3):
            frozen(torch.randn(5, 4)).sum().backward()
        assert module[0].weight.grad is None and module[2].weight.grad is not None
        unfrozen = set_trainable(frozen, ["0.weight", "0.bias"], True)
        for _ in range(2):
            unfrozen(torch.randn(5, 4)).sum().backward()
        assert module[0].weight.grad is not None
        assert unwrap_network(unfrozen) is module
    finally:
        dist.destroy_process_group()
    assert unwrap_network(torch.compile(module)) is module and unwrap_network(module) is module
    plain = nn.Linear(2, 2)
    assert set_trainable(plain, ["weight"], False) is plain and not plain.weight.requires_grad
    with pytest.raises(ValueError, match="no parameters named"):
        set_trainable(plain, ["encoder.weight"], True)


def test_swin_umamba_recipe(tmp_path, monkeypatch):
    trainer = make_trainer(trainers.nnUNetTrainerSwinUMambaLoG, monkeypatch, tmp_path)
    trainer.network = build(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny)
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, CosineDecayLRScheduler)
    assert {(g["lr"], g["weight_decay"], g["betas"], g["eps"]) for g in optimizer.param_groups} == {
        (1e-4, 0.05, (0.9, 0.999), 1e-5), (1e-4, 0.0, (0.9, 0.999), 1e-5)}
    names = {id(p): n.rsplit(".", 1)[-1] for n, p in trainer.network.named_parameters()}
    no_decay = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {"A_log", "D"}
    assert trainer.num_epochs == 1000 and trainer.freeze_encoder_epochs == 10
    for epoch in (0, 250, 500, 999, 1000):
        scheduler.step(epoch)
        expected = 1e-6 + (1e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * epoch / 1000))
        assert all(math.isclose(g["lr"], expected, rel_tol=1e-12) for g in optimizer.param_groups)
    assert math.isclose(scheduler.learning_rate(1000), 1e-6) and math.isclose(scheduler.learning_rate(0), 1e-4)
    counting = CosineDecayLRScheduler(optimizer, 1e-4, 1e-6, 4)  # without an argument, step() counts its calls
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-4)
    counting.step()
    assert math.isclose(optimizer.param_groups[0]["lr"], 1e-6 + (1e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="max_steps >= 1"):
        CosineDecayLRScheduler(optimizer, 1e-4, 1e-6, 0)


def test_swin_umamba_trainers_refuse_3d_and_dagger_is_a_vss_k4_decoder():
    with pytest.raises(ValueError, match="needs a 2d configuration"):
        build(trainers.nnUNetTrainerSwinUMambaLoG, "3d_fullres", 1)
    with torch.device("meta"):
        dagger = build(trainers.nnUNetTrainerSwinUMambaDagger)
    mixers = [block.mixer for level in dagger.decoder.levels for block in level.blocks]
    assert {(m.kind, m.layout.directions) for m in mixers} == {("vss", 4)}
