"""Acting at the speed limit (issue 10): PPO rollout collection against its two parts, side by side.

For 1 and 8 Hopper-v5 envs, each measured round runs one PPO rollout of each of:
- ``policy``: phase E's rollout collection (fused sampler + head + draw + env, then the batched
  value net and log-probs);
- ``env``: the same vector env stepped with random actions;
- ``sampler``: the fused sampler alone, at that batch size, called as the rollout calls it
  (``MultiSeedPolicy.base_sampler``: the op with its arguments prepared once, in inference mode).
Each call is one PPO rollout of the default config (``OnlineConfig.rollout_steps`` env steps summed
over the envs: 2048 steps of 1 env, 256 of each of 8), so the work after the loop (the batched
value net and log-probs) is spread over as many steps as in phase E.
The three alternate within every round and each keeps its minimum over the rounds, so that load
from other processes, which comes and goes, hits all three alike (measured one after the other,
the ratio to the limit swung between 0.62 and 0.87 on a loaded machine). benchmarks/report.py
turns them into steps/s and the limit 1 / (1/env + 1/sampler).
"""

import time

import numpy as np
import pytest
import torch

from uepo import envs, ops
from uepo.config import OnlineConfig
from uepo.nets import ValueNet
from uepo.phases.online import OnlineAgent, _collect
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import seed_everything


@pytest.fixture(scope="module")
def policy() -> MultiSeedPolicy:
    seed_everything(0)  # the default sizes: residual MLP 256×3, n 4, K_s 10, H 8, T_o 2, head 256×3
    return MultiSeedPolicy(policy_config("diffusion", 11, 3, history=2, horizon=8, num_seeds=4, tau=0.1),
                           torch.zeros(11), torch.ones(11))


@pytest.mark.skipif(not ops.compiled_available(), reason="the compiled kernels are not loaded")
@pytest.mark.parametrize("num_envs", [1, 8])
def test_acting(benchmark, policy, num_envs):
    cfg = OnlineConfig()
    steps = cfg.rollout_steps // num_envs  # env steps per env in one measured call: one rollout
    agent = OnlineAgent(policy, 0, ValueNet(policy.obs_dim), cfg)
    vec = envs.make_vector_env("Hopper-v5", num_envs, policy.history)
    state = {"obs": vec.reset(seed=list(range(num_envs)))[0]}
    returns, lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
    random_actions = np.random.default_rng(0).uniform(-1, 1, (steps, num_envs, policy.action_dim))
    cond = policy.cond(torch.as_tensor(state["obs"], dtype=torch.float32))
    base_of = policy.base_sampler(0)

    def collect():
        _, state["obs"] = _collect(agent, vec, state["obs"], steps, cfg, returns, lengths, [])

    def step_env():
        for t in range(steps):
            vec.step(random_actions[t])

    def sample():
        with torch.inference_mode():  # as _collect calls it
            for _ in range(steps):
                base_of(cond)

    parts = {"policy": collect, "env": step_env, "sampler": sample}
    best = dict.fromkeys(parts, float("inf"))

    def one_round():
        for kind, fn in parts.items():
            start = time.perf_counter()
            fn()
            best[kind] = min(best[kind], time.perf_counter() - start)

    benchmark.group = "acting"
    benchmark(one_round)
    benchmark.extra_info.update(key=f"acting_{num_envs}env", impl="interleaved", steps=steps * num_envs,
                                threads=torch.get_num_threads(), label=f"acting, {num_envs} env(s)",
                                min_s=best)
    vec.close()
