"""The one seeding scheme: every random stream of a run is derived here from the run seed s.

| stream | seed | why |
|---|---|---|
| phase P's start (global RNGs), batch generator | 1000·s + offset(P) | a phase run alone draws the same |
| sub-policy i's fixed noise ε_i, z^i | 1000·s + i (``pretrain.base_seed`` ≥ 0: that + i) | a sub-policy is its seed |
| states screening ``pretrain.seed_candidates`` (and τ's) | 1000·s + 400000 | the screen replays from pretrain.pt |
| the fresh seed bank of augmentation batch b | 10⁷ + 10⁴·s + b | fresh chains, apart from the sub-policies' |
| AM-Q's model noise | 12345, every policy and run | common random numbers: Ĵ differs by the policy only |
| BPPO of sub-policy i, in a torchrun run (its own streams on whichever rank) | 1000·s + 500 + i | |
| offline evaluation episode j | 1000·s + 100000 + j | disjoint from training |
| ``amq-topk-online`` selection episode j | 1000·s + 200000 + j | disjoint from the evaluation's |
| phase D's held-out start states (``improve.validate_states``) | 1000·s + 300000 | apart from the gate's draw |
| online env k's first reset | 1000·s + k | |
| online evaluation episode j | 10⁶ + 1000·s + j | the same episodes at every evaluation: a less noisy curve |
| a peer's fresh networks (``uepo.baselines``) | 1000·s + 7 | |

The offsets keep the streams of runs with seeds 0…99 apart from each other.
"""

from __future__ import annotations

PHASE_OFFSETS = {"critics": 1, "pretrain": 2, "dynamics": 3, "improve": 4, "evaluate": 5, "online": 6, "peer": 7,
                 "peer_iql": 8}
AMQ_NOISE_SEED = 12345
EVAL_OFFSET = 100_000
SELECT_OFFSET = 200_000
VALIDATE_OFFSET = 300_000
SCREEN_OFFSET = 400_000


def phase_seed(run_seed: int, phase: str) -> int:
    """Seed of phase ``phase``'s start and batch generator."""
    return run_seed * 1000 + PHASE_OFFSETS[phase]


def sub_policy_base_seed(run_seed: int, override: int = -1) -> int:
    """Sub-policy i draws its noise from ``base + i``; ``override`` ≥ 0 (``pretrain.base_seed``) wins."""
    return override if override >= 0 else 1000 * run_seed


def improve_sub_policy_seed(run_seed: int, index: int) -> int:
    """Phase D's streams for sub-policy ``index`` when ranks split the sub-policies (uepo.distributed)."""
    return run_seed * 1000 + 500 + index


def augmentation_bank_seed(run_seed: int, batch: int) -> int:
    return 10**7 + 10**4 * run_seed + batch


def evaluation_seed(run_seed: int) -> int:
    """First reset seed of the offline evaluation's episodes (episode j: + j)."""
    return run_seed * 1000 + EVAL_OFFSET


def selection_seed(run_seed: int) -> int:
    """First reset seed of ``--selection amq-topk-online``'s episodes."""
    return run_seed * 1000 + SELECT_OFFSET


def validation_seed(run_seed: int) -> int:
    """Generator seed of phase D's held-out AM-Q start states (``improve.validate_states``)."""
    return run_seed * 1000 + VALIDATE_OFFSET


def screen_seed(run_seed: int) -> int:
    """Generator seed of the dataset states that screen the seed candidates and calibrate τ after them."""
    return run_seed * 1000 + SCREEN_OFFSET


def online_env_seeds(run_seed: int, num_envs: int) -> list[int]:
    return [run_seed * 1000 + k for k in range(num_envs)]


def online_eval_seed(run_seed: int) -> int:
    return 1_000_000 + run_seed * 1000
