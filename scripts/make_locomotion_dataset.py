"""Make a medium / medium-replay pair of Minari datasets for a Gymnasium MuJoCo robot, by the recipe of
``../shared/datasets`` (D4RL's, scaled to a 2-core machine).

A SAC behaviour policy (stable-baselines3, its default hyper-parameters, 1 thread) trains on the v5 env
until its deterministic evaluation return reaches ``--target_return`` or ``--max_steps``:

- ``local/<robot>/medium-replay-v0`` holds every transition seen during that training (the learning curve);
- ``local/<robot>/medium-v0`` holds ``--medium_steps`` steps of stochastic rollouts of the final policy
  (whole episodes, the last one finished).

Reference scores are D4RL's constants for the robot (``uepo.tasks``), stored as ``ref_min_score`` /
``ref_max_score``. The training curve and the datasets' scores go to ``<robot>_provenance.json`` in
``--out``. stable-baselines3 is not a uepo dependency: run this from a virtual environment of its own::

    python -m venv ../sb3venv && ../sb3venv/bin/pip install torch stable-baselines3 "minari[hdf5]==0.5.4" \\
        "gymnasium[mujoco]==1.4.0" -c constraints.txt
    ../sb3venv/bin/python scripts/make_locomotion_dataset.py --env HalfCheetah-v5 --out ../datasets
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REF_SCORES = {"hopper": (-20.272305, 3234.3), "walker2d": (1.629008, 4592.3),
              "halfcheetah": (-280.178953, 12135.0)}  # D4RL's; the same constants as uepo.tasks


VELOCITY_CLIP = 10.0  # Hopper-v5 / Walker2d-v5 clip the observed qvel to this; HalfCheetah does not clip


def normalized(ret: float, robot: str) -> float:
    lo, hi = REF_SCORES[robot]
    return 100 * (ret - lo) / (hi - lo)


class Episode:
    """One episode's arrays as Minari wants them: observations has one row more than the rest."""

    def __init__(self, first_obs: np.ndarray):
        self.obs, self.actions, self.rewards, self.terms, self.truncs = [first_obs], [], [], [], []

    def add(self, action, reward, next_obs, terminated: bool, truncated: bool) -> None:
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.rewards.append(float(reward))
        self.obs.append(np.asarray(next_obs, dtype=np.float64))
        self.terms.append(bool(terminated))
        self.truncs.append(bool(truncated))

    def buffer(self):
        from minari.data_collector import EpisodeBuffer
        return EpisodeBuffer(id=None, observations=np.stack(self.obs), actions=np.stack(self.actions),
                             rewards=np.asarray(self.rewards), terminations=np.asarray(self.terms),
                             truncations=np.asarray(self.truncs), infos={})


def recorder(episodes: list[Episode]):
    """A stable-baselines3 callback that keeps every training transition, episode by episode."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            loc = self.locals
            obs = self.model._last_obs[0]  # the state the action was taken in (updated after this call)
            if not episodes or episodes[-1].done:
                episodes.append(Episode(np.asarray(obs, dtype=np.float64)))
                episodes[-1].done = False
            info, done = loc["infos"][0], bool(loc["dones"][0])
            truncated = bool(info.get("TimeLimit.truncated", False))
            next_obs = info["terminal_observation"] if done else loc["new_obs"][0]
            episodes[-1].add(loc["actions"][0], loc["rewards"][0], next_obs, done and not truncated, truncated)
            episodes[-1].done = done
            return True

    return Record()


def evaluate(model, env_id: str, episodes: int, deterministic: bool, seed: int) -> tuple[float, float]:
    import gymnasium as gym
    env, returns = gym.make(env_id), []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, r, term, trunc, _ = env.step(action)
            total, done = total + r, term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def rollouts(model, env_id: str, steps: int, seed: int) -> list[Episode]:
    """Stochastic rollouts of the final policy: whole episodes until at least ``steps`` steps."""
    import gymnasium as gym
    env, out, total = gym.make(env_id), [], 0
    while total < steps:
        obs, _ = env.reset(seed=seed + len(out))
        ep, done = Episode(obs), False
        while not done:
            action, _ = model.predict(obs, deterministic=False)
            obs, r, term, trunc, _ = env.step(action)
            ep.add(action, r, obs, term, trunc)
            done = term or trunc
        out.append(ep)
        total += len(ep.actions)
    env.close()
    return out


def write(dataset_id: str, env_id: str, episodes: list[Episode], robot: str, algorithm: str, description: str):
    import gymnasium as gym
    import minari
    env = gym.make(env_id)
    lo, hi = REF_SCORES[robot]
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=[e.buffer() for e in episodes], env=env, eval_env=env_id,
        algorithm_name=algorithm, author="uepo benchmark data", author_email="none@example.com",
        code_permalink="scripts/make_locomotion_dataset.py", description=description,
        ref_min_score=lo, ref_max_score=hi, num_episodes_average_score=100)
    env.close()
    returns = [sum(e.rewards) for e in episodes]
    return {"episodes": len(episodes), "steps": int(sum(len(e.actions) for e in episodes)),
            "mean_return": float(np.mean(returns)), "normalized": normalized(float(np.mean(returns)), robot)}


def verify(dataset_id: str, env_id: str, samples: int = 200, seed: int = 0) -> float:
    """Replay ``samples`` random stored transitions in the env (its state set from the stored observation, x = 0:
    these robots observe qpos without x, then qvel) and return the largest error in next observation or
    reward; a wrong recording (off-by-one, a reset observation in place of the terminal one) shows as O(1).
    Hopper and Walker2d observe qvel clipped to ±10 (a fifth of Walker2d medium's states have a clipped joint),
    so a state with a clipped velocity cannot be restored from its observation and is not replayed."""
    import gymnasium as gym
    import minari
    ds, env = minari.load_dataset(dataset_id), gym.make(env_id)
    env.reset(seed=seed)
    sim, rng, worst = env.unwrapped, np.random.default_rng(seed), 0.0
    nq = sim.model.nq
    episodes = list(ds.iterate_episodes())
    for _ in range(samples):
        ep = episodes[rng.integers(len(episodes))]
        t = int(rng.integers(len(ep.actions)))
        obs = ep.observations[t]
        if np.abs(obs[nq - 1:]).max() >= VELOCITY_CLIP:
            continue
        sim.set_state(np.concatenate([[0.0], obs[:nq - 1]]), obs[nq - 1:])
        nxt, reward, *_ = env.step(ep.actions[t])
        worst = max(worst, float(np.abs(nxt - ep.observations[t + 1]).max()), abs(reward - float(ep.rewards[t])))
    env.close()
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5", help="Gymnasium MuJoCo v5 env id")
    parser.add_argument("--out", type=Path, required=True, help="Minari root to write local/<robot>/... under")
    parser.add_argument("--target_return", type=float, default=3000.0, help="deterministic eval return to stop at")
    parser.add_argument("--max_steps", type=int, default=120_000, help="SAC env steps at most")
    parser.add_argument("--eval_every", type=int, default=10_000, help="env steps between evaluations")
    parser.add_argument("--eval_episodes", type=int, default=5, help="deterministic episodes per evaluation")
    parser.add_argument("--medium_steps", type=int, default=100_000, help="steps of the medium dataset")
    parser.add_argument("--seed", type=int, default=0, help="SAC, env and rollout seed")
    parser.add_argument("--verify_only", action="store_true", help="only replay stored transitions of --out's pair")
    args = parser.parse_args()

    import torch
    from stable_baselines3 import SAC
    torch.set_num_threads(1)
    robot = args.env.split("-")[0].lower()
    if robot not in REF_SCORES:
        raise SystemExit(f"no D4RL reference scores for {robot!r}; known: {sorted(REF_SCORES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["MINARI_DATASETS_PATH"] = str(args.out.resolve())
    ids = [f"local/{robot}/medium-replay-v0", f"local/{robot}/medium-v0"]
    if args.verify_only:
        for dataset_id in ids:
            print(f"{dataset_id}: largest replay error {verify(dataset_id, args.env):.2e}")
        return

    model = SAC("MlpPolicy", args.env, seed=args.seed, verbose=0, device="cpu")
    replay: list[Episode] = []
    callback, log, start = recorder(replay), [], time.time()
    while model.num_timesteps < args.max_steps:
        model.learn(args.eval_every, callback=callback, reset_num_timesteps=False, progress_bar=False)
        ret, std = evaluate(model, args.env, args.eval_episodes, True, 10_000)
        log.append({"step": model.num_timesteps, "eval_return": ret, "std": std, "time": time.time()})
        print(f"{model.num_timesteps} steps: deterministic return {ret:.1f} ± {std:.1f} "
              f"({normalized(ret, robot):.1f} normalised), {time.time() - start:.0f} s", flush=True)
        if ret >= args.target_return:
            break
    train_time = time.time() - start
    if replay and not replay[-1].done:
        replay.pop()  # an episode SAC did not finish is not a whole episode
    det, sto = evaluate(model, args.env, 10, True, 20_000), evaluate(model, args.env, 10, False, 20_000)
    prov = {"env_id": args.env, "behaviour": "SAC", "train_steps": model.num_timesteps, "train_time_s": train_time,
            "seed": args.seed, "target_return": args.target_return, "eval_log": log,
            "final_eval_deterministic": det, "final_eval_stochastic": sto,
            "normalized_det": normalized(det[0], robot), "normalized_sto": normalized(sto[0], robot)}
    prov["medium_replay"] = write(
        f"local/{robot}/medium-replay-v0", args.env, replay, robot, "SAC (stable-baselines3) training transitions",
        f"Every transition of a SAC run on {args.env} until it reached the medium target. Reference scores: D4RL.")
    prov["medium"] = write(
        f"local/{robot}/medium-v0", args.env, rollouts(model, args.env, args.medium_steps, 30_000), robot,
        "SAC (stable-baselines3) medium-level policy, stochastic actions",
        f"Stochastic rollouts of the SAC policy that reached the medium target on {args.env}. Reference scores: "
        "D4RL constants.")
    prov["replay_error"] = {dataset_id: verify(dataset_id, args.env) for dataset_id in ids}
    if max(prov["replay_error"].values()) > 1e-3:  # float32 storage gives ~1e-6
        print(f"WARNING: stored transitions do not replay in {args.env}: {prov['replay_error']}")
    (args.out / f"{robot}_provenance.json").write_text(json.dumps(prov, indent=1))
    print(json.dumps({k: prov[k] for k in ("train_steps", "normalized_det", "normalized_sto", "medium_replay",
                                           "medium", "replay_error")}, indent=1))


if __name__ == "__main__":
    main()
