"""Where phase E's 1-env acting step goes (issue 10): each part timed per env step, min over rounds.

    python scripts/acting_breakdown.py [--rounds 5] [--steps 2048]

Parts, each over the same real observation sequence of Hopper-v5 (the policy has
benchmarks/test_bench_acting.py's default sizes):
- ``sampler``: the fused sampler alone (``MultiSeedPolicy.base_sampler``), as the rollout calls it;
- ``env``: the vector env alone, stepped with random actions;
- ``alternate``: the two alternating, nothing else (their sum is the limit of 1 / (1/env + 1/sampler));
- ``alternate+obs``: the same with the normalisation and the observation copy of a real step;
- ``head``: the head and the draw alone (``OnlineAgent.action_sampler``);
- ``step (python)``: normalise, sampler and head as separate calls from Python
  (``OnlineAgent.acting_step(fused=False)``; until 73518d6 the head was ~20 Python calls of its own);
- ``step (one call)``: the same in one ``uepo::acting_step`` call (what ``_collect`` calls);
- ``collect``: phase E's whole rollout collection (``_collect``);
- ``collect (python)``: the same with the Python step;
- ``threaded``: ``alternate`` with the sampler on a worker thread (Event hand-off), to see whether
  keeping it off the env's core removes the cost of alternating.
"""

from __future__ import annotations

import argparse
import functools
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from uepo import envs
from uepo.config import OnlineConfig
from uepo.nets import ValueNet
from uepo.phases.online import OnlineAgent, _collect
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import seed_everything


class SamplerThread:
    """The sampler on its own thread; a call hands it one input and waits for the result."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn, self.inp, self.out = fn, None, None
        self.go, self.done = threading.Event(), threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            while True:
                self.go.wait()
                self.go.clear()
                self.out = self.fn(self.inp)
                self.done.set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inp = x
        self.go.set()
        self.done.wait()
        self.done.clear()
        return self.out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2048, help="env steps per timed part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(0)
    policy = MultiSeedPolicy(policy_config("diffusion", 11, 3, history=2, horizon=8, num_seeds=4, tau=0.1),
                             torch.zeros(11), torch.ones(11))
    cfg, steps = OnlineConfig(), args.steps
    agent = OnlineAgent(policy, 0, ValueNet(policy.obs_dim), cfg)
    vec = envs.make_vector_env("Hopper-v5", 1, policy.history)
    state = {"obs": vec.reset(seed=[0])[0]}
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 1, policy.action_dim))
    histories = [torch.as_tensor(vec.step(a)[0], dtype=torch.float32) for a in actions]
    conds = [policy.normalize(h).view(1, -1) for h in histories]
    sampler, draw, threaded = policy.base_sampler(0), agent.action_sampler(), SamplerThread(policy.base_sampler(0))
    returns, lengths = np.zeros(1), np.zeros(1, dtype=np.int64)

    def alternate_with_obs() -> None:
        obs = histories[0]
        for a in actions:
            sampler(policy.normalize(obs).view(1, -1))
            obs = torch.from_numpy(vec.step(a)[0])

    def collect(use: OnlineAgent) -> None:
        _, state["obs"] = _collect(use, vec, state["obs"], steps, cfg, returns, lengths, [])

    python_agent = OnlineAgent(policy, 0, agent.value, cfg)
    python_agent.acting_step = functools.partial(OnlineAgent.acting_step, python_agent, fused=False)
    one_call, python_step = agent.acting_step(1), python_agent.acting_step(1)

    parts: dict[str, Callable[[], None]] = {
        "sampler": lambda: [sampler(c) for c in conds],
        "env": lambda: [vec.step(a) for a in actions],
        "alternate": lambda: [(sampler(c), vec.step(a)) for c, a in zip(conds, actions, strict=True)],
        "alternate+obs": alternate_with_obs,
        "head": lambda: [draw(c[:, -policy.obs_dim:], c[:, :policy.action_dim]) for c in conds],
        "step (python)": lambda: [python_step(h) for h in histories],
        "step (one call)": lambda: [one_call(h) for h in histories],
        "collect": lambda: collect(agent),
        "collect (python)": lambda: collect(python_agent),
        "threaded": lambda: [(threaded(c), vec.step(a)) for c, a in zip(conds, actions, strict=True)],
    }
    best = dict.fromkeys(parts, float("inf"))
    for _ in range(args.rounds):  # interleaved, so that load from other processes hits every part alike
        for name, fn in parts.items():
            start = time.perf_counter()
            with torch.inference_mode(not name.startswith("collect")):  # _collect sets its own modes, as in E
                fn()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"{name:17s} {seconds / steps * 1e3:.3f} ms per env step")
    limit = best["sampler"] + best["env"]
    print(f"ratio to limit: collect {limit / best['collect']:.2f} (with the Python step "
          f"{limit / best['collect (python)']:.2f}), alternate alone {limit / best['alternate']:.2f}")


if __name__ == "__main__":
    main()
