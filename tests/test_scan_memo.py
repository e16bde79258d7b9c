"""The scan memo: a recomputing block runs its selective scan once per step, with unchanged outputs and gradients."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.ops import scan_torch, selective_scan
from logvmamba_nnunet.ops.scan_memo import ScanMemo, observe_records, run_or_replay
from logvmamba_nnunet.profiling.profile import saved_activation_bytes


@pytest.fixture
def forward_scans(monkeypatch) -> list[int]:
    """Counts the torch backend's forward scans."""
    calls = [0]
    original = scan_torch._forward_scan

    def counted(seq):
        calls[0] += 1
        return original(seq)

    monkeypatch.setattr(scan_torch, "_forward_scan", counted)
    return calls


@pytest.mark.parametrize("kind", ["local_global", "vss"])
def test_recomputing_block_scans_once_and_matches_the_plain_block(forward_scans, kind):
    torch.manual_seed(3)
    block = LoGVMambaBlock(12, 3, kind, planned_size=(4, 6, 5), drop_path=0.3, recompute=True,
                           scan_backend="torch").train()
    plain = copy.deepcopy(block)
    plain.recompute = False
    x = torch.randn(2, 4, 6, 5, 12, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    weights = torch.randn(2, 4, 6, 5, 12)

    torch.manual_seed(7)
    (block(x) * weights).sum().backward()
    assert forward_scans[0] == 1
    torch.manual_seed(7)
    (plain(x_plain) * weights).sum().backward()
    assert forward_scans[0] == 2
    assert torch.equal(x.grad, x_plain.grad)
    for (name, p), q in zip(block.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_recomputing_block_keeps_its_input_and_the_scan_memo_only():
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 2, "local", recompute=True, scan_backend="torch").train()
    x = torch.randn(1, 16, 12, 8, requires_grad=True)
    memos: list[torch.Tensor] = []
    with observe_records(memos.append):
        block(x)
    memo_bytes = sum(t.untyped_storage().nbytes() for t in memos)
    sequence = block.mixer.ssm.width * 16 * 12  # y (1, W, L) in float32
    assert len(memos) == 3 and memos[0].shape == (1, block.mixer.ssm.width, 16 * 12)
    assert memo_bytes >= 4 * sequence
    assert saved_activation_bytes(block, x) == x.untyped_storage().nbytes() + memo_bytes
    block.recompute = False
    assert saved_activation_bytes(block, x) > 3 * memo_bytes


def scan_inputs(length: int = 50, channels: int = 6, state: int = 4) -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, channels, length), torch.randn(2, channels, length), -torch.rand(channels, state) - 0.5,
            torch.randn(2, state, length), torch.randn(2, state, length))


def test_saved_state_shape_is_what_the_torch_scan_saves():
    u, delta, A, B, C = scan_inputs(length=301, channels=5, state=3)
    memo = ScanMemo()
    with memo.session():
        selective_scan(u.requires_grad_(), delta, A, B, C, delta_softplus=True, backend="torch")
    saved = memo._results[0][2]
    shape = scan_torch.saved_state_shape(2, 5, 3, 301, None, u.device)
    assert saved.numel() == math.prod(shape) and shape[1:] == (2, 5, 3)


def test_run_or_replay_records_then_replays_without_computing():
    u = torch.randn(2, 3, 7)
    results = (torch.randn(2, 3, 7), torch.randn(2, 3, 4), torch.randn(5, 2, 3, 4))
    calls = []

    def compute():
        calls.append(1)
        return results

    assert run_or_replay(u, compute) is results and len(calls) == 1  # no session: just computes
    memo, observed = ScanMemo(), []
    with observe_records(observed.append), memo.session():
        assert run_or_replay(u, compute) is results
    assert len(calls) == 2 and memo.recorded == 1 and [t.shape for t in observed] == [r.shape for r in results]
    for _ in range(2):  # every later session replays, from the first record on
        with memo.session():
            y, last, saved = run_or_replay(u, compute)
        assert len(calls) == 2
        assert torch.equal(y, results[0]) and torch.equal(last, results[1]) and saved is not None
        assert y.data_ptr() != results[0].data_ptr()  # fresh tensors for the outputs


def test_replay_refuses_scans_it_did_not_record():
    u = torch.randn(2, 3, 7)
    memo = ScanMemo()
    with memo.session():
        run_or_replay(u, lambda: (torch.zeros(2, 3, 7), torch.zeros(2, 3, 4), None))
    with memo.session(), pytest.raises(RuntimeError, match="does not match the recorded output"):
        run_or_replay(torch.randn(2, 3, 8), lambda: None)
    with memo.session(), pytest.raises(RuntimeError, match="more selective scans than the 1"):
        run_or_replay(u, lambda: None)
        run_or_replay(u, lambda: None)
