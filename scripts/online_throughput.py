"""Online environment steps per second on Hopper-v5: fused sampler vs the PyTorch reference.

Same policy (default sizes: residual MLP 256×3, n = 4 seeds, K_s = 10, H = 8, T_o = 2, head
256×3), same envs, same seeds; only ``uepo.ops.set_backend`` differs. Measures PPO rollout
collection (sampler + head + critic + env), the part of phase E that acting dominates.
Runs alternate between backends so that load from other processes hits both alike.

    python scripts/online_throughput.py --num-envs 1 8 --steps 512 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from uepo import envs, ops
from uepo.config import OnlineConfig
from uepo.nets import ValueNet
from uepo.phases.online import OnlineAgent, _collect
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import seed_everything


def measure(policy: MultiSeedPolicy, num_envs: int, steps: int, backend: str) -> float:
    ops.set_backend(backend)
    seed_everything(0)
    agent = OnlineAgent(policy, 0, ValueNet(policy.obs_dim), OnlineConfig())
    vec = envs.make_vector_env("Hopper-v5", num_envs, policy.history)
    obs, _ = vec.reset(seed=list(range(num_envs)))
    per_env = max(1, steps // num_envs)
    start = time.perf_counter()
    ep_return, ep_length = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
    _collect(agent, vec, obs, per_env, OnlineConfig(), ep_return, ep_length, [])
    elapsed = time.perf_counter() - start
    vec.close()
    return per_env * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=512, help="env steps per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not ops.compiled_available():
        raise SystemExit("the compiled kernels are not loaded, so there is nothing to compare: "
                         "build them first (make install)")
    seed_everything(0)
    cfg = policy_config("diffusion", 11, 3, history=2, horizon=8, num_seeds=4, tau=0.1)
    policy = MultiSeedPolicy(cfg, torch.zeros(11), torch.ones(11))
    print(f"torch {torch.__version__}, {args.threads} thread(s); "
          "policy: width 256×3, n=4, K_s=10, H=8, T_o=2")
    for n in args.num_envs:
        results: dict[str, list[float]] = {"auto": [], "reference": []}
        measure(policy, n, 32, "auto")  # warm-up (allocations, lazy init)
        for _ in range(args.repeats):
            for backend in results:
                results[backend].append(measure(policy, n, args.steps, backend))
        fused, ref = max(results["auto"]), max(results["reference"])
        print(f"num_envs={n}: fused {fused:.0f} steps/s, "
              f"reference {ref:.0f} steps/s, speed-up {fused / ref:.2f}x  (best of {args.repeats})")
    ops.set_backend("auto")


if __name__ == "__main__":
    main()
