"""Environments: the dataset's env from its Minari metadata, vector envs with state histories,
exact save/restore of their state (for resumable online runs), episodes and video.

The policy conditions on a history of ``T_o`` states (SPEC §1), so observations are (T_o, d_s)
arrays, padded at the start of an episode by repeating the first state, exactly like the dataset
windows: single envs through the ``ObservationHistory`` wrapper, the online phase's vector env
(``HistoryVectorEnv``) in one array it slides in place (the same numbers, without a wrapper layer).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

# Which pip package provides an env, by id prefix or entry-point module (for clear errors).
ENV_PACKAGES: dict[str, str] = {
    "Adroit": "gymnasium-robotics",
    "Fetch": "gymnasium-robotics",
    "HandManipulate": "gymnasium-robotics",
    "HandReach": "gymnasium-robotics",
    "FrankaKitchen": "gymnasium-robotics",
    "PointMaze": "gymnasium-robotics",
    "AntMaze": "gymnasium-robotics",
    "gymnasium_robotics": "gymnasium-robotics",
    "gymnasium.envs.mujoco": "gymnasium[mujoco]",
    "mujoco": "gymnasium[mujoco]",
    "Hopper": "gymnasium[mujoco]",
    "HalfCheetah": "gymnasium[mujoco]",
    "Walker2d": "gymnasium[mujoco]",
    "Ant": "gymnasium[mujoco]",
}

# Modules that register envs on import: gym.make by id needs them imported first.
_REGISTERING_MODULES = {"gymnasium-robotics": "gymnasium_robotics"}

ActFn = Callable[[np.ndarray], np.ndarray]  # (N, T_o, d_s) raw histories -> (N, d_a) actions


def env_spec_from_dataset(dataset: Any, eval_env: bool = True) -> EnvSpec:
    """The env a Minari dataset was made with (its eval env by default) from its metadata."""
    spec = getattr(dataset.spec, "eval_env_spec" if eval_env else "env_spec", None)
    spec = spec or dataset.spec.env_spec
    if spec is None:
        raise ValueError(
            f"dataset {dataset.spec.dataset_id} records no environment spec in its metadata, so uepo "
            "cannot make its env: pass an env id explicitly (e.g. env_id='Hopper-v5')"
        )
    return spec


def package_for(env: str | EnvSpec) -> str | None:
    """The pip package that provides ``env``, if known."""
    names = [env] if isinstance(env, str) else [env.id, str(env.entry_point)]
    for name in names:
        for prefix, package in ENV_PACKAGES.items():
            if name.startswith(prefix):
                return package
    return None


_mujoco_warnings_shown: set[str] = set()


def _print_mujoco_warning_once(message: str) -> None:
    if message not in _mujoco_warnings_shown:
        _mujoco_warnings_shown.add(message)
        print(f"MuJoCo WARNING: {message} (shown once per process)", file=sys.stderr, flush=True)


def show_mujoco_warnings_once() -> None:
    """MuJoCo prints its warnings each time: every model compile of HalfCheetah-v5's XML printed the same
    'settotalmass is deprecated' line, 80 times in one run's log. Each distinct text is shown once per
    process instead. A handler the user installed is left in place."""
    if "mujoco" not in sys.modules and importlib.util.find_spec("mujoco") is None:
        return
    import mujoco

    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_print_mujoco_warning_once)


def make_raw_env(env: str | EnvSpec, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """gym.make(env), saying which package to install if the env's package is missing."""
    package = package_for(env)
    show_mujoco_warnings_once()
    module = _REGISTERING_MODULES.get(package or "")
    if module is not None and importlib.util.find_spec(module) is not None:
        __import__(module)  # registers its envs with gymnasium
    try:
        return gym.make(env, render_mode=render_mode, **kwargs)
    except (ModuleNotFoundError, gym.error.NameNotFound, gym.error.DependencyNotInstalled) as exc:
        env_id = env if isinstance(env, str) else env.id
        hint = f"`pip install {package}`" if package else "install the package that provides it"
        raise RuntimeError(f"cannot make env {env_id!r} ({str(exc).rstrip('.')}): {hint} and retry") from exc


def make_env(env: str | EnvSpec, history: int = 1, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """gym.make(env) wrapped in ObservationHistory(history); says which package to install if
    the env's package is missing."""
    return ObservationHistory(make_raw_env(env, render_mode, **kwargs), history)


class ObservationHistory(gym.Wrapper):
    """Observations -> the last ``history`` states (T_o, d_s), oldest first; the start of an
    episode is padded by repeating its first state (as the dataset windows are, SPEC §1)."""

    def __init__(self, env: gym.Env, history: int):
        super().__init__(env)
        self.history = history
        self.observation_space = history_space(env.observation_space, history)
        self._frames = np.zeros(self.observation_space.shape, dtype=self.observation_space.dtype)

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._frames[:] = obs
        return self._frames.copy(), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames = np.concatenate([self._frames[1:], obs[None]], 0)
        return self._frames.copy(), reward, terminated, truncated, info


def history_space(box: gym.Space, history: int) -> gym.spaces.Box:
    """The (T_o, d_s) Box of state histories over a flat Box of states."""
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    if not isinstance(box, gym.spaces.Box) or len(box.shape) != 1:
        raise ValueError(f"state histories need a flat Box observation space, got {box}")
    return gym.spaces.Box(np.repeat(box.low[None], history, 0), np.repeat(box.high[None], history, 0),
                          dtype=box.dtype)


class HistoryVectorEnv:
    """``num_envs`` envs stepped in turn in this process, their (T_o, d_s) state histories kept in one
    preallocated (N, T_o, d_s) array.

    Returns what gymnasium's SyncVectorEnv over ObservationHistory-wrapped envs returns (the same
    numbers), with same-step autoreset: when an episode ends, ``step`` returns the next episode's
    first (padded) history and puts the ended one in ``info["final_obs"]`` (an object array, None
    where no episode ended). It skips what rollouts do not read but paid for at every step: the
    wrapper layer, the merging of every sub-env's info dict and the per-env copies.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], history: int):
        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self.single_observation_space = history_space(self.envs[0].observation_space, history)
        self.single_action_space = self.envs[0].action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.history = history
        self.frames = np.zeros(self.observation_space.shape, dtype=self.single_observation_space.dtype)
        self._latest = np.zeros((self.num_envs, self.frames.shape[-1]), dtype=self.frames.dtype)

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Reset every env (an int seed s seeds env k with s + k, as gymnasium does); info is empty."""
        seeds = [seed + k for k in range(self.num_envs)] if isinstance(seed, int) else seed
        seeds = [None] * self.num_envs if seeds is None else list(seeds)
        if len(seeds) != self.num_envs:
            raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for k, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            self.frames[k] = env.reset(seed=s, options=options)[0]  # padded: the first state T_o times
        return self.frames.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for k, env in enumerate(self.envs):
            self._latest[k], rewards[k], terminated[k], truncated[k], _ = env.step(actions[k])
        self.frames[:, :-1] = self.frames[:, 1:]  # slide every history by one state at once
        self.frames[:, -1] = self._latest
        info: dict[str, Any] = {}
        ended = np.flatnonzero(terminated | truncated)
        if len(ended):
            final = np.full(self.num_envs, None, dtype=object)
            for k in ended:
                final[k] = self.frames[k].copy()
                self.frames[k] = self.envs[k].reset()[0]
            info = {"final_obs": final, "_final_obs": terminated | truncated}
        return self.frames.copy(), rewards, terminated, truncated, info

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(env: str | EnvSpec, num_envs: int, history: int = 1) -> HistoryVectorEnv:
    """``num_envs`` copies in one process, observations (N, T_o, d_s) state histories.

    Same-step autoreset: when an episode ends, ``step`` returns the next episode's first
    observation and puts the last one in ``info["final_obs"]`` (needed to bootstrap through
    truncations).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    probe = make_raw_env(env)  # fail here, with the clear error, rather than inside the vector env
    history_space(probe.observation_space, history)
    probe.close()
    return HistoryVectorEnv([lambda: make_raw_env(env) for _ in range(num_envs)], history)


# ---------------------------------------------------------------------------------------------
# Exact state of MuJoCo envs, for resuming a rollout where it stopped
# ---------------------------------------------------------------------------------------------


def _mujoco_state(env: gym.Env) -> np.ndarray:
    import mujoco

    u = env.unwrapped
    if not (hasattr(u, "model") and hasattr(u, "data")):
        raise TypeError(
            f"{type(u).__name__} is not a MuJoCo env: uepo can only save and restore the state of "
            "MuJoCo envs, so online runs on it cannot resume mid-episode"
        )
    spec = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads, incl. the warm start
    state = np.empty(mujoco.mj_stateSize(u.model, spec))
    mujoco.mj_getState(u.model, u.data, state, spec)
    return state


def capture_env_state(vec: HistoryVectorEnv) -> list[dict]:
    """Per sub-env: physics, env RNG, step counter, observation history. Plain types/arrays only."""
    states = []
    for k, env in enumerate(vec.envs):
        state: dict[str, Any] = {
            "physics": _mujoco_state(env),
            "np_random": env.unwrapped.np_random.bit_generator.state,
            "history": vec.frames[k].copy(),
        }
        time_limit = _time_limit(env)
        if time_limit is not None:
            state["elapsed_steps"] = time_limit._elapsed_steps
        states.append(state)
    return states


def restore_env_state(vec: HistoryVectorEnv, states: Sequence[dict]) -> None:
    """Undo capture_env_state on a vector env of the same envs that has been reset once."""
    import mujoco

    if len(states) != vec.num_envs:
        raise ValueError(f"saved state holds {len(states)} envs but the vector env has {vec.num_envs}: "
                         "resume with the same num_envs")
    for k, (env, state) in enumerate(zip(vec.envs, states, strict=True)):
        u = env.unwrapped
        physics = np.asarray(state["physics"], dtype=np.float64)
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        if physics.size != mujoco.mj_stateSize(u.model, spec):
            raise ValueError("saved env state does not fit this env's model: resume with the same env")
        mujoco.mj_setState(u.model, u.data, physics, spec)
        mujoco.mj_forward(u.model, u.data)  # derived quantities (positions of bodies) some envs read
        u.np_random.bit_generator.state = state["np_random"]
        vec.frames[k] = np.asarray(state["history"], dtype=vec.frames.dtype)
        time_limit = _time_limit(env)
        if time_limit is not None:
            time_limit._elapsed_steps = int(state["elapsed_steps"])


def _time_limit(env: gym.Env) -> gym.wrappers.TimeLimit | None:
    """The TimeLimit layer of a wrapped env, if it has one."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return env
        env = env.env
    return None


# ---------------------------------------------------------------------------------------------
# Episodes and video
# ---------------------------------------------------------------------------------------------


def run_episodes(
    act: ActFn,
    env: str | EnvSpec,
    episodes: int,
    seed: int,
    history: int = 1,
    num_envs: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths of ``episodes`` full episodes; episode j is reset with seed + j, so
    the result depends only on the policy and ``seed`` (not on how many envs run at once)."""
    num_envs = min(num_envs or episodes, episodes)
    envs = [make_env(env, history) for _ in range(num_envs)]
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    slot_episode = list(range(num_envs))  # which episode each env is running (-1: idle)
    next_episode = num_envs
    obs = np.stack([e.reset(seed=seed + j)[0] for j, e in enumerate(envs)])
    try:
        while any(j >= 0 for j in slot_episode):
            active = [k for k, j in enumerate(slot_episode) if j >= 0]
            actions = act(obs[active])
            for a, k in zip(actions, active, strict=True):
                o, r, terminated, truncated, _ = envs[k].step(a)
                j = slot_episode[k]
                returns[j] += r
                lengths[j] += 1
                if terminated or truncated:
                    if next_episode < episodes:
                        slot_episode[k] = next_episode
                        o, _ = envs[k].reset(seed=seed + next_episode)
                        next_episode += 1
                    else:
                        slot_episode[k] = -1
                obs[k] = o
    finally:
        for e in envs:
            e.close()
    return returns, lengths


def video_writer_problem() -> str | None:
    """Why an mp4 cannot be written here, or None if it can."""
    if importlib.util.find_spec("imageio") is None:
        return "imageio is not installed: `pip install imageio imageio-ffmpeg` (or `pip install uepo[video]`)"
    if importlib.util.find_spec("imageio_ffmpeg") is None and importlib.util.find_spec("av") is None:
        return ("imageio has no mp4 writer: `pip install imageio-ffmpeg` (or `pip install uepo[video]`); "
                "it ships its own ffmpeg binary")
    return None


def record_video(act: ActFn, env: str | EnvSpec, path: str | Path, seed: int, history: int = 1,
                 fps: int | None = None, max_steps: int | None = None) -> tuple[float, int]:
    """Render one episode through MuJoCo's offscreen renderer into an mp4; returns (return, length).

    Uses MUJOCO_GL (default ``egl``, else set ``MUJOCO_GL=osmesa``); raises with the reason when
    an mp4 cannot be written or no OpenGL context can be made.
    """
    problem = video_writer_problem()
    if problem is not None:
        raise RuntimeError(f"cannot write {path}: {problem}")
    import imageio

    os.environ.setdefault("MUJOCO_GL", "egl")
    e = make_env(env, history, render_mode="rgb_array")
    frames, total, steps = [], 0.0, 0
    try:
        obs, _ = e.reset(seed=seed)
        try:
            frames.append(e.render())
        except Exception as exc:  # the GL backends fail with many exception types
            raise RuntimeError(
                f"MuJoCo's offscreen renderer failed with MUJOCO_GL={os.environ['MUJOCO_GL']} ({exc}). "
                "Install EGL (libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or osmesa."
            ) from exc
        done = False
        while not done and (max_steps is None or steps < max_steps):
            obs, r, terminated, truncated, _ = e.step(act(obs[None])[0])
            total, steps, done = total + float(r), steps + 1, terminated or truncated
            frames.append(e.render())
        fps = fps or int(e.metadata.get("render_fps", 30))
    finally:
        e.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, np.stack(frames), fps=fps)
    return total, steps
