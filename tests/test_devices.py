"""Every phase on every device: the same small pipeline on the CPU and, where one is present, on a CUDA
GPU (those cases skip cleanly without one). On the CPU the device path is the plain path, bit for bit.

The CUDA cases check that phases A–E keep their tensors and networks on the GPU, produce finite
results of the right shapes, and save checkpoints that load anywhere (scripts/gpu_check.sh runs them).
"""

from __future__ import annotations

import copy

import pytest
import torch

from uepo import ops
from uepo.config import apply_overrides, preset
from uepo.data import load_offline_data
from uepo.phases import PhaseContext
from uepo.phases.critics import train_critics
from uepo.phases.dynamics import train_dynamics
from uepo.phases.improve import improve
from uepo.phases.pretrain import pretrain
from uepo.runs import Run, seed_everything
from uepo.train import main

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() "
                                                              "is False): the CUDA case runs on a GPU machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
SMALL = {"critics": {"steps": 30, "hidden": 16, "checkpoint_every": 10},
         "pretrain": {"steps": 30, "width": 16, "num_blocks": 1, "checkpoint_every": 10, "tau_states": 32},
         "dynamics": {"max_epochs": 3, "max_updates_per_epoch": 3, "hidden": 16, "augment_batch": 32,
                      "augment_ratio": 0.2},
         "improve": {"steps": 10, "ope_every": 5, "ope_states": 8, "ope_horizon": 5, "std_warmup_steps": 5}}


def offline_phases(root, data, device: str):
    seed_everything(0)
    cfg = apply_overrides(preset("smoke"), copy.deepcopy(SMALL))
    cfg.device = device
    ctx = PhaseContext(Run(root, tensorboard=False), cfg, data.to(device), torch.device(device), False)
    critics = train_critics(ctx)
    pre = pretrain(ctx)
    dynamics = train_dynamics(ctx, pre.policy)
    return critics, pre, dynamics, improve(ctx, pre.policy, critics, dynamics)


@pytest.mark.parametrize("device", DEVICES)
def test_offline_phases_run_on_the_device(tmp_path, tiny_hopper, device):
    data = load_offline_data(tiny_hopper)
    critics, pre, dynamics, improved = offline_phases(tmp_path / "a", data, device)
    kind = torch.device(device).type
    for module in (critics.q, critics.v, pre.policy, dynamics.model, improved.policy):
        assert {p.device.type for p in [*module.parameters(), *module.buffers()]} == {kind}
    assert 0 <= improved.selected < improved.policy.num_seeds
    assert all(torch.isfinite(torch.tensor(improved.amq_best)))
    # checkpoints hold CPU-loadable state: a finished run loads its phases on the CPU
    again = offline_phases(tmp_path / "a", data, "cpu")[3]
    assert again.selected == improved.selected and again.amq_best == improved.amq_best


def test_data_to_the_cpu_is_the_same_data(tiny_hopper):
    data = load_offline_data(tiny_hopper)
    moved = data.to("cpu")
    idx = torch.tensor([0, 3, 7])
    assert torch.equal(moved.cond(idx, 2), data.cond(idx, 2)) and moved.provenance == data.provenance
    chunks, mask = moved.chunks(idx, 4)
    assert chunks.device == mask.device == data.obs.device


@pytest.mark.parametrize("device", DEVICES)
def test_train_runs_every_phase_on_the_device(tmp_path, tiny_hopper, device):
    """python -m uepo.train --device D: phases A–E and the evaluation (on the CPU a tiny smoke run)."""
    root = tmp_path / "run"
    argv = ["--dataset", tiny_hopper, "--preset", "smoke", "--device", device, "--run_dir", str(root),
            "--online.env_steps", "512", "--online.eval_every", "512"]
    assert main(argv) == 0
    bundle = torch.load(root / "checkpoints" / "online.pt", map_location="cpu", weights_only=False)
    assert bundle["counters"]["env_steps"] >= 512
    online = bundle["summary"]  # phase E acted and trained on the device, its envs on the CPU
    assert torch.device(online["device"]).type == torch.device(device).type
    assert online["kernel_backend"] == ops.backend(device)


def test_asking_for_a_device_this_machine_lacks_says_what_was_found(capsys):
    for device, says in (("mps", "cpu or cuda"), ("cuda:7", "cuda")):
        if device.startswith("cuda") and torch.cuda.device_count() > 7:
            continue
        assert main(["--preset", "smoke", "--device", device]) == 2
        assert says in capsys.readouterr().err


@CUDA
def test_the_acting_step_replayed_from_a_cuda_graph_computes_the_eager_step():
    """--online.cuda_graph: the captured step gives the eager step's μ^{i*}_1, mean and scale, and sees the
    head's in-place updates (an optimiser step between replays)."""
    from test_online import tiny_bundle

    from uepo.config import OnlineConfig
    from uepo.phases.online import OnlineAgent, load_value
    from uepo.policy import MultiSeedPolicy

    bundle = tiny_bundle()
    policy = MultiSeedPolicy.from_state(bundle["policy"]).cuda()
    value = load_value(bundle["value"], policy.obs_dim).cuda()
    eager = OnlineAgent(policy, 1, value, OnlineConfig())
    graphed = OnlineAgent(policy, 1, value, OnlineConfig(cuda_graph=True))
    hist = torch.randn(3, policy.history, policy.obs_dim, device="cuda")
    with torch.inference_mode():
        step = graphed.acting_step(3)
        for _ in range(2):
            base, _, mean, scale = step(hist)
            base_e, _, mean_e, scale_e = eager.acting_step(3)(hist)
            for a, b in ((base, base_e), (mean, mean_e), (scale, scale_e)):
                torch.testing.assert_close(a, b)
            for p in policy.heads[1].parameters():
                p.add_(0.01)  # what an optimiser step does: in place


def test_bf16_autocast_and_unusable_device_options_are_checked(tmp_path, tiny_hopper, capsys):
    """--amp bf16 trains phases A–C under autocast to finite results (here on the CPU, where it is not
    faster: it is for GPUs); options that cannot work are refused before anything trains."""
    from uepo.config import validate

    cfg = apply_overrides(preset("smoke"), copy.deepcopy(SMALL))
    cfg.amp = "fp8"
    with pytest.raises(ValueError, match="--amp must be off or bf16"):
        validate(cfg)
    if not torch.cuda.is_available():
        assert main(["--dataset", tiny_hopper, "--preset", "smoke", "--online.cuda_graph", "true"]) == 2
        assert "needs --device cuda" in capsys.readouterr().err
    seed_everything(0)
    data = load_offline_data(tiny_hopper)
    cfg.amp = "bf16"
    ctx = PhaseContext(Run(tmp_path / "amp", tensorboard=False), cfg, data, torch.device("cpu"), False)
    critics = train_critics(ctx)
    pre = pretrain(ctx)
    dynamics = train_dynamics(ctx, pre.policy)
    assert all(torch.isfinite(p).all() for m in (critics.q, critics.v, pre.policy, dynamics.model)
               for p in m.parameters())
    assert {p.dtype for p in pre.policy.parameters()} == {torch.float32}  # weights stay float32
    cfg.amp = "off"  # the same phase in float32 is another computation: autocast did act
    seed_everything(0)
    plain = train_critics(PhaseContext(Run(tmp_path / "fp32", tensorboard=False), cfg, data, torch.device("cpu"),
                                       False))
    pairs = list(zip(plain.q.parameters(), critics.q.parameters(), strict=True))
    assert all(torch.allclose(a, b, atol=1e-2) for a, b in pairs) and not all(torch.equal(a, b) for a, b in pairs)


def test_compiled_networks_train_to_the_eager_result(tmp_path, tiny_hopper):
    """--compile: phase A's networks through torch.compile (inductor) reach the eager weights (the same
    math, other kernels: equal to float32 rounding), and the checkpoint keeps the plain state_dict keys."""
    data = load_offline_data(tiny_hopper)
    results = {}
    for compiled in (False, True):
        cfg = apply_overrides(preset("smoke"), {"critics": {"steps": 6, "hidden": 16, "checkpoint_every": 0}})
        cfg.compile = compiled
        seed_everything(0)
        run = Run(tmp_path / str(compiled), tensorboard=False)
        results[compiled] = train_critics(PhaseContext(run, cfg, data, torch.device("cpu"), False))
        keys = set(torch.load(run.checkpoints / "critics.pt", weights_only=False)["q"])
        assert not any("_orig_mod" in k for k in keys)
        # nn.Module.compile leaves its compiled forward here: the flag reached the networks (V is trained, not copied)
        assert (getattr(results[compiled].v, "_compiled_call_impl", None) is not None) == compiled
    for a, b in zip(results[False].q.parameters(), results[True].q.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
