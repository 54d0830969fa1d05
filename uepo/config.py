"""Configuration schema: one dataclass per phase, presets by name, YAML files and nested overrides.

Every field carries its one-line description as ``metadata["help"]`` (shown by ``--help``).
Resolution order: preset -> YAML file -> overrides; the command line that builds on it is
``uepo.cli``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from uepo.datasets import DEFAULT_DATASET_ID
from uepo.ops import PREDICTIONS


def f(default: Any, help: str) -> Any:  # noqa: A002 (mirrors argparse's name)
    """A dataclass field with a one-line description."""
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    horizon: int = f(8, "H: action-chunk length predicted by the denoiser")
    history: int = f(2, "T_o: number of past states in the condition S_t")
    action_clip: float = f(1e-5, "actions are clipped to ±(1 - action_clip)")


@dataclass
class CriticConfig:
    steps: int = f(1_000_000, "IQL gradient steps (phase A)")
    batch_size: int = f(256, "transitions per IQL update")
    lr_q: float = f(3e-4, "Adam learning rate of the twin Q")
    lr_v: float = f(3e-4, "Adam learning rate of V")
    expectile: float = f(0.7, "IQL expectile of the V regression")
    gamma: float = f(0.99, "discount")
    polyak: float = f(0.005, "target-Q Polyak rate")
    hidden: int = f(256, "critic MLP width")
    layers: int = f(3, "critic MLP hidden layers")
    log_every: int = f(1000, "steps between metric rows")
    checkpoint_every: int = f(10_000, "steps between resumable checkpoints")


@dataclass
class PretrainConfig:
    steps: int = f(300_000, "diffusion (or Gaussian BC) gradient steps (phase B)")
    batch_size: int = f(256, "chunks per update")
    lr: float = f(1e-4, "AdamW learning rate (cosine decay after warm-up)")
    weight_decay: float = f(1e-6, "AdamW weight decay")
    warmup_steps: int = f(1000, "linear learning-rate warm-up steps")
    grad_clip: float = f(1.0, "gradient-norm clip (0: none)")
    diffusion_steps: int = f(100, "K: DDPM training timesteps (cosine schedule)")
    sampling_steps: int = f(10, "K_s: DDIM sampling steps")
    sampler: str = f("ddim", "sub-policy solver: ddim (K_s steps, fused kernel) or ddpm (all K steps, PyTorch)")
    num_seeds: int = f(4, "n: sub-policies (fixed seeds, or Gaussian BC members)")
    seed_temperature: float = f(0.1, "t: sub-policy i's initial noise ε_i ~ N(0, t²I) (1: a full prior draw)")
    seed_candidates: int = f(0, "screen this many initial noises (candidate j drawn like sub-policy j) after training "
                                "and keep the n whose unperturbed first actions are nearest the data's; 0: the first n")
    first_action_weight: float = f(1.0, "loss weight of the chunk's first (executed) action vs. each later step")
    start_fraction: float = f(0.0, "share of each batch drawn from the first start_steps steps of episodes")
    start_steps: int = f(25, "an episode's first steps that start_fraction and start_floor oversample")
    start_floor: float = f(-1.0, "least share of each batch from episodes' first start_steps steps: rows are "
                                 "drawn from them only where the data holds fewer (long episodes); -1: by policy "
                                 "kind, 0.1 diffusion (RESULTS 0r, 0t), 0 gaussian-ensemble")
    start_action_weight: float = f(-1.0, "loss weight of the executed action on the rows drawn from episodes' "
                                         "starts (start_floor, start_fraction), times first_action_weight; -1: by "
                                         "policy kind, 8 diffusion, 1 gaussian-ensemble")
    base_seed: int = f(-1, "seed of sub-policy 0's noise generator; -1: 1000 * run seed")
    prediction: str = f("x0", "denoiser output and loss: x0 (the clean chunk; the default since RESULTS 0n: ε's "
                              "sub-policies stood still on HalfCheetah, x̂₀'s ran at the data's level), eps "
                              "(ε-prediction, SPEC) or v (√ᾱ ε − √(1−ᾱ) x_0); each samples through the fused sampler")
    denoiser: str = f("mlp", "denoiser network: mlp (fused kernel) or unet (paper's U-Net, PyTorch path)")
    width: int = f(256, "denoiser / BC width")
    num_blocks: int = f(3, "denoiser residual blocks / BC hidden layers")
    time_dim: int = f(32, "sinusoidal step-embedding size")
    ema: float = f(0.995, "EMA decay of the sampling copy")
    seq_kl: bool = f(True, "use the sequence-level KL term -α·mean min(R_i, κ) in L_B")
    alpha: float = f(1e-4, "α: weight of the sequence-level KL term (1e-3 cost medium-replay imitation, RESULTS 0a)")
    sigma_seq: float = f(0.1, "σ_seq of the Gaussian sequence densities in R_i")
    kappa: float = f(1.0, "κ: cap of each R_i")
    seq_kl_form: str = f("closed", "R_i form: closed (KL between sub-policies) or data (literal, ablation)")
    kl_every: int = f(2, "apply the KL term every this many updates")
    kl_batch: int = f(64, "states in the KL term's sub-batch")
    kl_chain_steps: int = f(5, "DDIM steps of the differentiable chain for the KL term")
    divergence: bool = f(True, "adaptive perturbation in the sampler (False: η = 0, τ = 0)")
    eta: float = f(0.1, "η: perturbation strength")
    tau_quantile: float = f(0.25, "τ = this quantile of the nearest-competitor divergence")
    tau_states: int = f(4096, "dataset states used to calibrate τ")
    log_every: int = f(1000, "steps between metric rows")
    checkpoint_every: int = f(10_000, "steps between resumable checkpoints")


@dataclass
class DynamicsConfig:
    ensemble: int = f(7, "dynamics ensemble members")
    elites: int = f(5, "members kept by hold-out error")
    hidden: int = f(0, "member width; 0: 200 locomotion, 400 Adroit")
    layers: int = f(4, "member hidden layers")
    lr: float = f(1e-3, "Adam learning rate")
    weight_decay: float = f(2.5e-5, "L2 penalty on member weights")
    batch_size: int = f(256, "transitions per member per update")
    max_epochs: int = f(200, "epoch cap per fit")
    max_updates_per_epoch: int = f(0, "cap on updates per epoch (0: one pass over the data)")
    patience: int = f(5, "epochs without hold-out improvement before stopping")
    holdout_fraction: float = f(0.1, "fraction of real transitions held out (max 5000)")
    augmentation: bool = f(True, "diffusion augmentation + refit (False: T̂ = T̂0)")
    augment_ratio: float = f(2.0, "generate up to this multiple of the dataset size")
    fresh_seed_prob: float = f(0.5, "probability of a fresh random seed instead of a sub-policy")
    disagreement_quantile: float = f(0.9, "ε_KL = this quantile of the disagreement on real pairs")
    augment_weight: float = f(0.5, "loss weight of augmented samples in the refit")
    augment_batch: int = f(1024, "start states per augmentation rollout batch")
    checkpoint_every: int = f(5, "epochs between resumable checkpoints")


@dataclass
class ImproveConfig:
    steps: int = f(10_000, "BPPO steps per sub-policy (phase D)")
    batch_size: int = f(512, "states per BPPO update")
    lr: float = f(1e-4, "head learning rate (linear decay)")
    clip: float = f(0.25, "initial ratio clip")
    clip_decay: float = f(0.96, "clip multiplied by this at each OPE evaluation")
    grad_clip: float = f(0.5, "gradient-norm clip")
    entropy: float = f(0.0, "entropy bonus")
    std_warmup_steps: int = f(2000, "log-std warm-start steps (NLL of dataset actions around μ^i_1)")
    ope_every: int = f(1000, "E_ope: BPPO steps between AM-Q evaluations")
    accept_z: float = f(-1.0, "accept a BPPO head only if its AM-Q gain is this many standard errors of the "
                              "paired per-start-state difference (0: any gain, as Uni-O4); -1: by policy kind, "
                              "1.645 diffusion (RESULTS 0l–0n), 0 gaussian-ensemble (Uni-O4's rule; RESULTS 0i)")
    ope_states: int = f(256, "dataset start states of each AM-Q rollout")
    validate_states: int = f(-1, "select i* on AM-Q from this many fresh start states, not the gate's own (whose "
                                 "accepted Ĵ is a max over tries); 0: on the gate's states (Uni-O4); -1: by policy "
                                 "kind, 1024 diffusion (RESULTS 0s, 0t), 0 gaussian-ensemble")
    ope_horizon: int = f(0, "H_ope: AM-Q rollout length; 0: 200 locomotion, 20 Adroit")
    ope_support_factor: float = f(2.0, "a rollout row stops where T̂ disagrees more than this multiple of its "
                                       "largest disagreement on real hold-out pairs (inf: never)")
    ope_state_margin: float = f(0.1, "predicted states are clipped to the data's range widened by this share")
    ope_start_fraction: float = f(0.0, "share of AM-Q's start states drawn from episodes' first ope_start_steps "
                                       "steps, where the real evaluation starts; 0: uniform over the data (Uni-O4)")
    ope_start_steps: int = f(1, "ope_start_fraction's pool: the first this many steps of every episode")
    selection: str = f("amq", "amq (offline: argmax AM-Q), amq-gain-penalty (argmax Ĵ_raw − p·(Ĵ − Ĵ_raw)) or "
                              "amq-topk-online (Uni-O4: top-k by AM-Q, then real episodes; peeks at the env)")
    gain_penalty: float = f(1.0, "amq-gain-penalty: p, how much of BPPO's AM-Q gain counts against a sub-policy")
    select_topk: int = f(2, "amq-topk-online: sub-policies that get real episodes")
    select_episodes: int = f(3, "amq-topk-online: real episodes per candidate (seeds disjoint from evaluation)")
    eval_episodes: int = f(10, "real-env episodes per policy in the final evaluation (0: skip)")
    eval_raw: bool = f(True, "also evaluate each raw μ^i in the real env")
    eval_improved: bool = f(True, "also evaluate every improved sub-policy (selection regret, AM-Q rank "
                                  "correlation)")


@dataclass
class OnlineConfig:
    env_steps: int = f(1_000_000, "online environment steps (phase E)")
    rollout_steps: int = f(2048, "steps per PPO rollout (summed over vector envs)")
    num_envs: int = f(1, "vectorised environments")
    epochs: int = f(10, "PPO epochs per rollout")
    minibatch_size: int = f(128, "PPO minibatch size")
    clip: float = f(0.2, "PPO ratio clip (SPEC §3E: 0.05, --spec-3e); 0.2 with lr 2e-4 ended higher on 4 of 4 "
                         "dataset-seeds, RESULTS 5d")
    value_clip: float = f(0.05, "value-function clip (0: none)")
    entropy: float = f(0.01, "entropy bonus")
    gamma: float = f(0.995, "discount (SPEC §3E: 0.99, --spec-3e): 0.995 ended higher on 6 of 6 dataset-seeds, "
                             "RESULTS 5b")
    gae_lambda: float = f(0.95, "GAE λ")
    lr_actor: float = f(0.0, "head learning rate; 0: by robot family (2e-4 locomotion, 5e-6 Adroit)")
    lr_critic: float = f(2e-4, "value learning rate")
    reward_scale: float = f(0.1, "rewards are multiplied by this")
    grad_clip: float = f(0.5, "gradient-norm clip")
    freeze_backbone: bool = f(True, "keep the diffusion backbone frozen")
    refit_value: bool = f(True, "refit V_τ on scaled rewards before PPO when reward_scale != 1")
    anneal_lr: bool = f(False, "decay both learning rates linearly over the phase's rollouts to 1/rollouts of "
                         "their value at the last (CleanRL's PPO)")
    value_warmup_steps: int = f(0, "first env steps in which only V learns (the actor waits for a fitted critic)")
    init_std: float = f(0.0, "the head's acting std at the start of phase E, the same in every state (0: phase D's)")
    learn_std: bool = f(True, "the head's log-std layer trains (False: it acts with phase D's std, or init_std, "
                              "for the whole phase)")
    eval_every: int = f(10_000, "env steps between deterministic evaluations")
    eval_episodes: int = f(10, "episodes per evaluation")
    checkpoint_every: int = f(10_000, "env steps between resumable checkpoints")
    cuda_graph: bool = f(False, "replay the acting step (sampler, head, draw) from a CUDA graph (--device cuda)")


@dataclass
class Config:
    dataset: str = f(DEFAULT_DATASET_ID, "Minari dataset id (default: the small Hopper set shipped)")
    preset: str = f("quick", "budget preset: quick (default, ~10 min), smoke (CI), bench (CPU), "
                             "bench-online (bench + 1e6 online steps) or paper (SPEC §4)")
    seed: int = f(0, "run seed (python, numpy, torch)")
    out: str = f("runs", "parent folder of run directories (runs/<dataset>/<time>-<seed>)")
    run_dir: str = f("", "exact run directory (overrides out); reuse one with --resume")
    resume: bool = f(False, "continue the run in run_dir from its checkpoints")
    reuse_from: str = f("", "copy the finished phases of this earlier run whose inputs match (ablations)")
    phases: str = f("all", "which phases run: offline (A–D + evaluation), online (E) or all")
    policy: str = f("diffusion", "diffusion (UEPO) or gaussian-ensemble (Uni-O4 BC ensemble)")
    download: bool = f(False, "let Minari download a dataset that is not found locally")
    device: str = f("cpu", "torch device: cpu, cuda or cuda:N (every phase trains there; envs step on the CPU)")
    threads: int = f(1, "torch CPU threads")
    amp: str = f("off", "off, or bf16: the training steps of phases A–C under bfloat16 autocast (for GPUs)")
    compile: bool = f(False, "torch.compile the networks that phases A–C train (nn.Module.compile)")
    data: DataConfig = field(default_factory=DataConfig)
    critics: CriticConfig = field(default_factory=CriticConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    improve: ImproveConfig = field(default_factory=ImproveConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)


SELECTIONS = ("amq", "amq-gain-penalty", "amq-topk-online")  # --selection
# The fields whose -1 means "by --policy": UEPO's diffusion sub-policies take what was measured for them, the
# Gaussian ensemble (Uni-O4's baseline) keeps Uni-O4's recipe: uniform batches, any AM-Q gain, selection on the
# gate's values. The phases read them resolved (``resolve_by_policy``, in ``PhaseContext``).
BY_POLICY: dict[tuple[str, str], dict[str, float]] = {
    # the one-sided 5 % level: AM-Q gains within its noise are not taken (RESULTS 0l–0n; 0i: it lost on Gaussian)
    ("improve", "accept_z"): {"diffusion": 1.645, "gaussian-ensemble": 0.0},
    # a rare episode start topped up to a tenth of each batch, its executed action weighted (RESULTS 0r, 0t)
    ("pretrain", "start_floor"): {"diffusion": 0.1, "gaussian-ensemble": 0.0},
    ("pretrain", "start_action_weight"): {"diffusion": 8.0, "gaussian-ensemble": 1.0},
    # i* on AM-Q from 1024 fresh start states (16× bench's gate, 4× the paper preset's): no winner's curse from the
    # gate's own (RESULTS 0s, 0t; 4× bench's gate, 256, was no better than the gate's own)
    ("improve", "validate_states"): {"diffusion": 1024, "gaussian-ensemble": 0},
}
ACCEPT_Z_BY_POLICY = BY_POLICY[("improve", "accept_z")]
SECTIONS = ("data", "critics", "pretrain", "dynamics", "improve", "online")

# Each preset lists the fields it changes from the defaults (the defaults are the paper protocol).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    # Phases A–D of local/hopper/medium-v0 in ≤ 30 min on 2 CPU cores shared with other jobs (so
    # sized for ~15 min alone), 1 thread. Measured there: an IQL step (256×3 critics) ~15 ms, a
    # diffusion step ~15 ms plus ~65 ms for the 64-state KL chain, one AM-Q evaluation (64 states ×
    # 200 steps) ~7 s; so the critics get 2 hidden layers, the KL term a smaller, rarer sub-batch.
    "bench": {
        "critics": {"steps": 25_000, "layers": 2, "log_every": 500, "checkpoint_every": 5000},
        "pretrain": {"steps": 10_000, "lr": 3e-4, "warmup_steps": 500, "kl_batch": 32, "kl_every": 4,
                     "tau_states": 2048, "log_every": 250, "checkpoint_every": 2000},
        # 400 updates (about one pass over 100k transitions) per epoch: at 100, T̂'s hold-out error was
        # 33–44 % higher on both robots and BPPO's AM-Q gate accepted worse heads (RESULTS 0c)
        "dynamics": {"max_epochs": 20, "max_updates_per_epoch": 400, "augment_ratio": 1.0,
                     "patience": 4, "checkpoint_every": 5},
        "improve": {"steps": 2000, "ope_every": 500, "ope_states": 64, "std_warmup_steps": 500,
                    "eval_episodes": 10},
        "online": {"env_steps": 50_000, "eval_every": 5000, "eval_episodes": 5},
    },
    # bench's phases A–D, then the protocol's 1e6 online env steps on 8 vector envs with an evaluation
    # every 50k (issue 10). Sized from the acting benchmark (8 envs: ~1,300–1,500 env steps/s with both
    # cores busy, PPO updates ~1/3 of that again): E ~25–30 min, the whole run ~45–50 min projected.
    "bench-online": {},  # filled below from bench
    # The default: the whole pipeline (A–E) on the shipped Hopper subset in about 10 min on 2
    # CPU cores, to see every phase work and every artefact appear. Budgets ~1/4 of bench.
    "quick": {
        "critics": {"steps": 6_000, "layers": 2, "log_every": 250, "checkpoint_every": 2000},
        "pretrain": {"steps": 2_500, "lr": 3e-4, "warmup_steps": 200, "kl_batch": 32, "kl_every": 4,
                     "tau_states": 1024, "log_every": 100, "checkpoint_every": 1000},
        "dynamics": {"max_epochs": 6, "max_updates_per_epoch": 100, "augment_ratio": 1.0,
                     "patience": 3, "checkpoint_every": 2},
        "improve": {"steps": 400, "ope_every": 200, "ope_states": 32, "std_warmup_steps": 200,
                    "eval_episodes": 3},
        "online": {"env_steps": 8192, "eval_every": 4096, "eval_episodes": 3},
    },
    "smoke": {  # seconds: CI and the end-to-end test
        "critics": {"steps": 60, "batch_size": 64, "hidden": 32, "layers": 2, "log_every": 20,
                    "checkpoint_every": 30},
        "pretrain": {"steps": 40, "batch_size": 32, "warmup_steps": 5, "width": 32, "num_blocks": 1,
                     "diffusion_steps": 20, "sampling_steps": 5, "kl_batch": 8, "kl_chain_steps": 3,
                     "tau_states": 64, "log_every": 10, "checkpoint_every": 20},
        "dynamics": {"ensemble": 3, "elites": 2, "hidden": 32, "layers": 2, "max_epochs": 3,
                     "max_updates_per_epoch": 10, "batch_size": 64, "augment_ratio": 0.5,
                     "augment_batch": 64, "checkpoint_every": 2},
        "improve": {"steps": 20, "batch_size": 64, "std_warmup_steps": 10, "ope_every": 10,
                    "ope_states": 8, "ope_horizon": 10, "eval_episodes": 1},
        "online": {"env_steps": 2048, "rollout_steps": 256, "minibatch_size": 64, "epochs": 2,
                   "eval_every": 1024, "eval_episodes": 1, "checkpoint_every": 1024},
    },
}


PRESETS["bench-online"] = {**PRESETS["bench"], "online": {
    "env_steps": 1_000_000, "num_envs": 8, "rollout_steps": 2048, "eval_every": 50_000, "eval_episodes": 10,
    "checkpoint_every": 50_000}}


# SPEC §3E's values for phase E as one field set: `python -m uepo.train --spec-3e`, or
# apply_overrides(cfg, SPEC_3E). The defaults differ in γ (0.995, RESULTS 5b), the ratio clip (0.2)
# and the locomotion head's learning rate (2e-4, RESULTS 5d); the library's own fields are pinned at
# what SPEC's PPO does. SPEC's lr_actor 2e-5 is pinned for every robot (the default is by family).
SPEC_3E: dict[str, dict[str, Any]] = {"online": {
    "rollout_steps": 2048, "epochs": 10, "minibatch_size": 128, "clip": 0.05, "value_clip": 0.05,
    "entropy": 0.01, "gamma": 0.99, "gae_lambda": 0.95, "lr_actor": 2e-5, "lr_critic": 2e-4, "reward_scale": 0.1,
    "freeze_backbone": True, "refit_value": True, "value_warmup_steps": 0, "init_std": 0.0, "learn_std": True}}


def preset(name: str) -> Config:
    """The default config with a preset's changes applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    cfg = Config(preset=name)  # field defaults = the paper protocol; presets change budgets
    apply_overrides(cfg, PRESETS[name])
    return cfg


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Merge a nested dict ({section: {field: value}} or {field: value}) into ``cfg`` with type checks."""
    for key, value in overrides.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"config section {key!r} must be a mapping, got {value!r}")
            section = getattr(cfg, key)
            for sub, v in value.items():
                _set_field(section, sub, v, f"{key}.{sub}")
        else:
            _set_field(cfg, key, value, key)
    return cfg


def _set_field(obj: Any, name: str, value: Any, label: str) -> None:
    fields = {fl.name: fl for fl in dataclasses.fields(obj)}
    if name not in fields:
        raise ValueError(f"unknown config field {label!r}; run `python -m uepo.train --help` for the list")
    setattr(obj, name, _coerce(value, type(getattr(obj, name)), label))


def _coerce(value: Any, typ: type, label: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{label} expects true/false, got {value!r}")
    try:
        if typ is int and isinstance(value, str):
            return int(float(value)) if "e" in value.lower() else int(value)
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} expects a {typ.__name__}, got {value!r}") from exc


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    cfg = Config()
    return apply_overrides(cfg, d)


def save_yaml(cfg: Config, path: Path) -> None:
    from uepo.runs import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of fields")
    return data


# What a run whose config.yaml predates one of these fields computed with, where today's default differs: a
# resumed or reused run must read that, not the default (which -1 now resolves by policy kind).
PREDATED = {("pretrain", "start_floor"): 0.0, ("pretrain", "start_action_weight"): 1.0,
            ("improve", "validate_states"): 0}


def load_run_yaml(path: Path) -> dict:
    """A run's saved config.yaml, with ``PREDATED``'s value for each such field it lacks."""
    saved = load_yaml(path)
    for (section, name), value in PREDATED.items():
        part = saved.get(section)
        if isinstance(part, dict) and name not in part:
            part[name] = value
    return saved


def validate(cfg: Config) -> None:
    if cfg.phases not in ("offline", "online", "all"):
        raise ValueError(f"--phases must be offline, online or all, got {cfg.phases!r}")
    if cfg.phases == "online" and not (cfg.resume and cfg.run_dir):
        raise ValueError("--phases online continues an existing run: pass --resume RUN_DIR")
    if cfg.policy not in ("diffusion", "gaussian-ensemble"):
        raise ValueError(f"--policy must be 'diffusion' or 'gaussian-ensemble', got {cfg.policy!r}")
    if cfg.pretrain.denoiser not in ("mlp", "unet"):
        raise ValueError(f"--denoiser must be 'mlp' or 'unet', got {cfg.pretrain.denoiser!r}")
    if cfg.pretrain.prediction not in PREDICTIONS:
        raise ValueError(f"--prediction must be 'eps', 'x0' or 'v', got {cfg.pretrain.prediction!r}")
    if cfg.pretrain.seq_kl_form not in ("closed", "data"):
        raise ValueError(f"--seq_kl_form must be 'closed' or 'data', got {cfg.pretrain.seq_kl_form!r}")
    if cfg.improve.selection not in SELECTIONS:
        raise ValueError(f"--selection must be one of {', '.join(SELECTIONS)}, got {cfg.improve.selection!r}")
    if not math.isfinite(cfg.improve.gain_penalty):
        raise ValueError(f"--gain_penalty must be a finite number (1: today's default), got {cfg.improve.gain_penalty}")
    if not 0.0 <= cfg.improve.ope_start_fraction <= 1.0 or cfg.improve.ope_start_steps < 1:
        raise ValueError("--improve.ope_start_fraction must be in [0, 1] and --improve.ope_start_steps >= 1")
    if not (cfg.online.init_std == 0 or math.exp(-5) < cfg.online.init_std < 1):
        raise ValueError("--online.init_std must be 0 (keep phase D's std) or in (0.0067, 1), "
                         f"got {cfg.online.init_std}")
    if cfg.improve.validate_states < -1:
        raise ValueError(f"--improve.validate_states must be >= 0 (0: select on the gate's own start states) or -1 "
                         f"(by policy kind: {BY_POLICY[('improve', 'validate_states')]}), "
                         f"got {cfg.improve.validate_states}")
    if not (math.isfinite(cfg.improve.accept_z) and (cfg.improve.accept_z >= 0 or cfg.improve.accept_z == -1)):
        raise ValueError(f"--improve.accept_z must be a finite number >= 0 (0: accept any AM-Q gain) or -1 (by "
                         f"policy kind: {ACCEPT_Z_BY_POLICY}), got {cfg.improve.accept_z}")
    if not cfg.improve.ope_support_factor > 0:
        raise ValueError("--ope_support_factor must be > 0 (inf: rollouts never stop)")
    if cfg.pretrain.sampler not in ("ddim", "ddpm"):
        raise ValueError(f"--sampler must be 'ddim' or 'ddpm', got {cfg.pretrain.sampler!r}")
    check_device(cfg.device)
    if cfg.amp not in ("off", "bf16"):
        raise ValueError(f"--amp must be off or bf16, got {cfg.amp!r}")
    if cfg.online.cuda_graph and not cfg.device.startswith("cuda"):
        raise ValueError("--online.cuda_graph needs --device cuda (CUDA graphs replay GPU work only); drop it "
                         "on the CPU")
    if cfg.data.horizon < 3:
        raise ValueError("--horizon must be >= 3 (the divergence uses accelerations)")
    if cfg.pretrain.seed_candidates and cfg.pretrain.seed_candidates < cfg.pretrain.num_seeds:
        raise ValueError(f"--pretrain.seed_candidates ({cfg.pretrain.seed_candidates}) must be 0 or at least "
                         f"num_seeds ({cfg.pretrain.num_seeds}): it keeps num_seeds of the candidates")
    if cfg.pretrain.seed_temperature < 0:
        raise ValueError("--seed_temperature must be >= 0")
    if cfg.pretrain.first_action_weight <= 0:
        raise ValueError("--first_action_weight must be > 0")
    if not 0 <= cfg.pretrain.start_fraction <= 1:
        raise ValueError("--start_fraction must be in [0, 1]")
    if not (0 <= cfg.pretrain.start_floor <= 1 or cfg.pretrain.start_floor == -1):
        raise ValueError("--start_floor must be in [0, 1] (the least share of a batch from episodes' starts) or -1 "
                         f"(by policy kind: {BY_POLICY[('pretrain', 'start_floor')]})")
    if not (cfg.pretrain.start_action_weight > 0 or cfg.pretrain.start_action_weight == -1):
        raise ValueError("--start_action_weight must be > 0 or -1 "
                         f"(by policy kind: {BY_POLICY[('pretrain', 'start_action_weight')]})")
    if cfg.pretrain.start_steps < 1:
        raise ValueError("--start_steps must be >= 1")
    if cfg.pretrain.num_seeds < 1:
        raise ValueError("--num_seeds must be >= 1")
    if cfg.dynamics.elites > cfg.dynamics.ensemble:
        raise ValueError("--elites cannot exceed --ensemble")
    if not 1 <= cfg.pretrain.kl_chain_steps <= cfg.pretrain.diffusion_steps:
        raise ValueError("--kl_chain_steps must be in [1, diffusion_steps]")


def accept_z_of(cfg: Config) -> float:
    """BPPO's acceptance margin for this run: ``improve.accept_z``, or its policy kind's value where it is -1."""
    return resolve_by_policy(cfg).improve.accept_z


def resolve_by_policy(cfg: Config) -> Config:
    """A copy of ``cfg`` with each ``BY_POLICY`` field that is -1 set to its policy kind's value: what the phases
    read. config.yaml keeps the -1, so a run resumes, and a run made before a field's default moved keeps its
    own value."""
    out = copy.deepcopy(cfg)
    for (section, name), values in BY_POLICY.items():
        part = getattr(out, section)
        if getattr(part, name) == -1:
            setattr(part, name, type(getattr(part, name))(values[cfg.policy]))
    return out


def check_device(name: str) -> None:
    """Refuse a device this machine cannot train on, naming what was asked for and what was found."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...): {exc}") from None
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: uepo trains on cpu or cuda, not {device.type}")
    if not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"--device {name!r} asks for a CUDA GPU, but none is available here (torch "
                         f"{torch.__version__} is {build}; torch.cuda.device_count() = {torch.cuda.device_count()}); "
                         "use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        found = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} GPU(s): {found}")
