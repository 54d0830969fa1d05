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
- ``env (process)``, ``alternate (env process)``: the env alone, and alternating with the sampler, with the
  env in a worker process on the other core (``EnvProcess``: shared memory, both sides spin on a flag, no
  system call per step). If alternating costs because the sampler and MuJoCo evict each other from one
  core's caches, this removes the cost at the price of a hand-off and of both cores; ``--no_process``
  skips it where the machine has one core.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from multiprocessing import shared_memory

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


def _env_worker(name: str, action_dim: int, obs_shape: tuple[int, ...], dtype: str, env_id: str, history: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    flag, action, obs = EnvProcess.views(shm, action_dim, obs_shape, dtype)
    vec = envs.make_vector_env(env_id, 1, history)
    obs[...] = vec.reset(seed=[0])[0]
    flag[0] = EnvProcess.DONE
    while True:  # spin: a step request is answered without a system call on either side
        f = flag[0]
        if f == EnvProcess.REQUEST:
            obs[...] = vec.step(action)[0]
            flag[0] = EnvProcess.DONE
        elif f == EnvProcess.STOP:
            break
    vec.close()
    del flag, action, obs
    shm.close()


class EnvProcess:
    """A 1-env vector env stepped in a worker process: the action goes in and the observation comes out
    through shared memory, and both sides spin on a flag (x86 keeps the stores in order)."""

    IDLE, REQUEST, DONE, STOP = 0, 1, 2, 3

    @staticmethod
    def views(shm: shared_memory.SharedMemory, action_dim: int, obs_shape: tuple[int, ...],
              dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flag = np.ndarray((1,), np.int64, shm.buf, 0)
        action = np.ndarray((1, action_dim), np.float64, shm.buf, 64)  # its own cache line
        obs = np.ndarray(obs_shape, np.dtype(dtype), shm.buf, 128 + 8 * action_dim)
        return flag, action, obs

    def __init__(self, env_id: str, history: int, action_dim: int, obs_shape: tuple[int, ...], dtype: str):
        size = 128 + 8 * action_dim + int(np.prod(obs_shape)) * np.dtype(dtype).itemsize
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        self.flag, self.action, self.obs = self.views(self.shm, action_dim, obs_shape, dtype)
        self.flag[0] = self.IDLE
        self.proc = mp.get_context("spawn").Process(
            target=_env_worker, args=(self.shm.name, action_dim, obs_shape, dtype, env_id, history), daemon=True)
        self.proc.start()
        while self.flag[0] != self.DONE:
            time.sleep(0.01)

    def step(self, action: np.ndarray) -> np.ndarray:
        self.action[...] = action
        self.flag[0] = self.REQUEST
        while self.flag[0] != self.DONE:
            pass
        return self.obs

    def close(self) -> None:
        self.flag[0] = self.STOP
        self.proc.join()
        del self.flag, self.action, self.obs
        self.shm.close()
        self.shm.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2048, help="env steps per timed part")
    parser.add_argument("--no_process", action="store_true", help="skip the parts with the env in a worker process")
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
    proc = None
    if not args.no_process:
        proc = EnvProcess("Hopper-v5", policy.history, policy.action_dim, vec.frames.shape, str(vec.frames.dtype))
        parts["env (process)"] = lambda: [proc.step(a) for a in actions]
        parts["alternate (env process)"] = lambda: [(sampler(c), proc.step(a))
                                                    for c, a in zip(conds, actions, strict=True)]
    best = dict.fromkeys(parts, float("inf"))
    for _ in range(args.rounds):  # interleaved, so that load from other processes hits every part alike
        for name, fn in parts.items():
            start = time.perf_counter()
            with torch.inference_mode(not name.startswith("collect")):  # _collect sets its own modes, as in E
                fn()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"{name:17s} {seconds / steps * 1e3:.3f} ms per env step")
    if proc is not None:
        proc.close()
    limit = best["sampler"] + best["env"]
    print(f"ratio to limit: collect {limit / best['collect']:.2f} (with the Python step "
          f"{limit / best['collect (python)']:.2f}), alternate alone {limit / best['alternate']:.2f}"
          + ("" if proc is None else
             f", alternate with the env in a process {limit / best['alternate (env process)']:.2f}"))


if __name__ == "__main__":
    main()
