"""Evaluation: deterministic episodes of a sub-policy in the dataset's own environment.

The environment comes from the dataset's Minari metadata (its eval env spec); scores are
normalised per SPEC §1 and labelled with the dataset id, because scores on local or Minari-v0
data are not comparable with D4RL-v2 tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from uepo.policy import MultiSeedPolicy
from uepo.tasks import normalized_score, reference_scores


def evaluate_policy(
    policy: MultiSeedPolicy,
    env: Any,
    seed_index: int,
    episodes: int = 10,
    seed: int = 0,
    raw: bool = False,
    dataset_id: str = "",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    num_envs: int | None = None,
) -> dict:
    """Run ``episodes`` deterministic episodes of sub-policy ``seed_index``.

    Args:
        env: a gymnasium env id or EnvSpec (e.g. ``OfflineData.env_spec``, from the Minari metadata).
        raw: act with the raw diffusion action μ^i_1 instead of the head's mean.
        seed: episode j is reset with ``seed + j`` (the same starts for every policy compared).

    Returns:
        {"dataset", "env", "seed_index", "raw", "returns", "lengths", "return_mean", "return_std",
        "score_mean", "score_std", "scores", "label"}; scores are None without reference returns.
    """
    from uepo.envs import run_episodes

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 <= seed_index < policy.num_seeds:
        raise ValueError(f"seed_index must be in [0, {policy.num_seeds}), got {seed_index}")

    device = policy.obs_mean.device  # the envs run on the CPU: one transfer each way per step

    def act(hist: np.ndarray) -> np.ndarray:
        h = torch.as_tensor(hist, dtype=torch.float32, device=device)
        with torch.no_grad():
            if raw:
                a = policy.base_action(h, seed_index)
            else:
                a = policy.act(h, seed_index, deterministic=True)
        return a.clamp(-1, 1).cpu().numpy().astype(np.float64)

    returns, lengths = run_episodes(act, env, episodes, seed, history=policy.history, num_envs=num_envs)
    scores = normalized_score(returns, (ref_min_score, ref_max_score))
    env_id = env if isinstance(env, str) else getattr(env, "id", str(env))
    result = {
        "dataset": dataset_id,
        "env": env_id,
        "seed_index": seed_index,
        "raw": raw,
        "episodes": episodes,
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "scores": None if scores is None else scores.tolist(),
        "score_mean": None if scores is None else float(scores.mean()),
        "score_std": None if scores is None else float(scores.std()),
    }
    what = f"raw μ^{seed_index}" if raw else f"sub-policy {seed_index}"
    score_text = "n/a" if scores is None else f"{result['score_mean']:.1f} ± {result['score_std']:.1f}"
    result["label"] = (f"{dataset_id} [{env_id}] {what}: normalised score {score_text} "
                       f"over {episodes} episodes")
    return result


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's ρ (average ranks for ties); None with fewer than 2 values or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"rank_correlation needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2 or not all(np.isfinite(x)) or not all(np.isfinite(y)):
        return None

    def ranks(v: list[float]) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = v.argsort(kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def uniform_regret(raw: list[float] | None, improved: list[float] | None) -> float | None:
    """The regret of a uniformly random pick among the improved sub-policies, on average (best real
    score over raw and improved − the improved ones' mean): a selection rule's no-information baseline."""
    if not improved:
        return None
    return max(improved + (raw or [])) - float(np.mean(improved))


def regret_floor(episode_scores: list[list[float]], draws: int = 2000, seed: int = 0) -> float | None:
    """The regret that a pick knowing every candidate's true score still shows on average, because the
    regret is itself measured from a few evaluation episodes per candidate.

    ``episode_scores`` (candidates × episodes) are the evaluation's per-episode scores; every candidate
    played the same episode seeds, so a paired bootstrap resamples episodes jointly. Taking the measured
    means as the truth, the perfect pick j* is the best of them, and the floor is the mean over resamples of
    max_j m*_j − m*_{j*}. A selection rule whose regret is near this cannot be told from a perfect one with
    this evaluation; a target below it needs more evaluation episodes (it shrinks about as 1/√episodes).
    None when there is nothing to resample (fewer than 2 candidates or 2 episodes, or unequal counts).
    """
    lengths = {len(e) for e in episode_scores}
    if len(episode_scores) < 2 or len(lengths) != 1 or lengths.pop() < 2:
        return None
    x = np.asarray(episode_scores, dtype=np.float64)
    best = int(np.argmax(x.mean(axis=1)))
    resampled = np.random.default_rng(seed).integers(0, x.shape[1], (draws, x.shape[1]))
    means = x[:, resampled].mean(axis=2)  # (candidates, draws)
    return float((means.max(axis=0) - means[best]).mean())


def evaluation_episode_scores(evaluation: dict) -> list[list[float]] | None:
    """Per-episode scores of every evaluated raw and improved sub-policy in a run's ``evaluation`` section
    (summary.json), raw first: the candidates of the selection regret."""
    runs = (evaluation or {}).get("raw", []) + (evaluation or {}).get("improved", [])
    if not runs or any("scores" not in r for r in runs):
        return None
    return [list(r["scores"]) for r in runs]


RANDOM_LEVEL = 2.0  # normalised scores below this are a random policy's (0 by definition; its episodes spread ~±1)
LEARNED_SHARE = 0.5  # a selected policy below this share of the data's own score has not learned its behaviour


RARE_START_SHARE = 0.1  # --pretrain.start_floor's tested value: data whose episode starts are rarer than this


def score_warnings(scores: dict, start_share: float | None = None, start_rows: float = 0.0) -> list[str]:
    """The offline result's scores that cannot be a learned policy's: the selected one, or every raw μ^i,
    at a random policy's level (a normalised score below ``RANDOM_LEVEL``: it falls or stands still
    from the start), or the selected one below ``LEARNED_SHARE`` of the data's own score (a HalfCheetah that
    stands still scores 2.2–2.9, above the random level: RESULTS 0o). Such a policy is not to be used or
    fine-tuned as if it had learned, so the run says so, with what to do: the evaluated sub-policy that did
    learn (``better_candidate``), and the start floor where every sub-policy missed the data's behaviour and
    the data's episode starts (``start_share``, phase B's ``start_natural_share``) are rare and phase B drew no
    extra start rows (``start_rows``, its ``start_rows_per_batch``) (``rare_start``)."""
    out = []
    selected, raw = scores.get("selected"), scores.get("raw") or []
    data = scores.get("dataset_episodes")
    data_text = "" if data is None else f"; the dataset's own episodes score {data:.1f}"
    if selected is not None and selected < RANDOM_LEVEL:
        i = scores["selected_index"]
        out.append(f"the selected sub-policy {i} scores {selected:.1f} in the real env, a random policy's level "
                   f"(normalised 0 = random; below {RANDOM_LEVEL:g} here{data_text}), although its AM-Q was "
                   f"{scores['amq_selected_candidates'][i]:.4g}: T̂ and Q_τ are wrong where it goes. Do not use "
                   "this policy as learned: look at the warnings above and the table's other candidates, or try "
                   "another --seed" + ("" if scores.get("selection_method") == "amq-topk-online" else
                                       " or a selection with real episodes (--selection amq-topk-online)") + ".")
    elif selected is not None and data is not None and data >= 2 * RANDOM_LEVEL and selected < LEARNED_SHARE * data:
        out.append(f"the selected sub-policy {scores['selected_index']} scores {selected:.1f} in the real env, below "
                   f"{LEARNED_SHARE:g} × the dataset's own episodes ({data:.1f}): it has not learned the data's "
                   "behaviour (on a robot that never terminates a policy that stands still scores above the random "
                   "level: 2.2–2.9 on HalfCheetah). Do not use this policy as learned; look at the table's other "
                   "candidates and docs/RESULTS.md 0o, or try another --seed.")
    if out:
        out[-1] += better_candidate(scores)
    if raw and all(x is not None and x < RANDOM_LEVEL for x in raw):
        out.append(f"every raw sub-policy scores at a random policy's level ({[round(x, 1) for x in raw]}, "
                   f"below {RANDOM_LEVEL:g}{data_text}): phase B's sub-policies do not imitate the data. Check "
                   "phase B's loss in metrics.csv and plots/pretrain.png; seed screening (--pretrain.seed_candidates "
                   "16), a longer --pretrain.steps or another --seed may help.")
    hint = rare_start(raw, data, start_share, start_rows)
    if hint:
        out.append(hint)
    return out


def better_candidate(scores: dict) -> str:
    """A sentence naming the improved sub-policy that did learn, where the selected one did not: the final
    evaluation scored every candidate, so a user can act with it (a pick made with real episodes, as
    ``--selection amq-topk-online`` makes, not offline). Empty where no candidate reaches the learned level (a
    warned selected policy is below it, so a candidate that reaches it is another sub-policy)."""
    improved, data = scores.get("improved") or [], scores.get("dataset_episodes")
    if not improved or None in improved or data is None:
        return ""
    best = int(np.argmax(improved))
    if improved[best] < max(LEARNED_SHARE * data, RANDOM_LEVEL):
        return ""
    return (f" Improved sub-policy {best} scored {improved[best]:.1f} in the same evaluation: "
            f"uepo.load_policy(RUN_DIR, sub_policy={best}) acts with it (a pick made with real episodes).")


def rare_start(raw: list, data: float | None, start_share: float | None, start_rows: float = 0.0) -> str:
    """The start floor's hint where every raw sub-policy scored below ``LEARNED_SHARE`` of the data, the
    data's episode starts are rarer than ``RARE_START_SHARE`` and phase B drew no extra start rows (the floor
    was off: the Gaussian ensemble, or ``--pretrain.start_floor 0``): a rare start that decides the episode is a
    known way for every sub-policy to miss the gait (HalfCheetah medium-replay, RESULTS 0o–0t)."""
    if (not raw or None in raw or data is None or start_share is None or data < 2 * RANDOM_LEVEL
            or start_share >= RARE_START_SHARE or start_rows > 0 or max(raw) >= LEARNED_SHARE * data):
        return ""
    return (f"every raw sub-policy scores below {LEARNED_SHARE:g} × the dataset's own episodes "
            f"({[round(x, 1) for x in raw]} against {data:.1f}), and episodes' first steps are only "
            f"{100 * start_share:.1f} % of this data's states: a start that is rare in the data but decides the "
            "episode is a known way for every sub-policy to miss the data's gait. Try --pretrain.start_floor 0.1 "
            "--pretrain.start_action_weight 8 (the diffusion policy's default, -1): on HalfCheetah medium-replay it "
            "made every seed of five run (selected 7.3–12.0 against about 2 without it and the data's 8.2; "
            "docs/RESULTS.md 0r, 0t).")


def selection_report(selected: int, amq_raw: list[float], amq_best: list[float], raw: list[float] | None,
                     improved: list[float] | None, episode_scores: list[list[float]] | None = None) -> dict:
    """How well did AM-Q select, measured with real-env scores of every candidate.

    regret = (best real score over raw and improved sub-policies) − (selected policy's real score);
    regret_uniform = the regret that a pick made uniformly at random among the improved sub-policies
    has on average (best − their mean): the no-information baseline, so a selection rule is worth its
    cost only where its regret is below it. regret_floor = what a perfect pick's regret measures on
    average with this evaluation (``regret_floor``, from the candidates' ``episode_scores``): the
    evaluation's own noise. The rank correlations compare AM-Q with the real scores over sub-policies.
    """
    out: dict = {"selected_index": selected}
    if improved is not None:
        chosen = improved[selected]
        best_pool = improved + (raw or [])
        out.update(regret=max(best_pool) - chosen, regret_uniform=uniform_regret(raw, improved),
                   regret_vs_improved=max(improved) - chosen,
                   best_improved_index=int(np.argmax(improved)),
                   amq_picks_best_improved=bool(int(np.argmax(improved)) == selected),
                   amq_rank_correlation=rank_correlation(amq_best, improved))
        if raw is not None:
            out["regret_vs_raw"] = max(raw) - chosen
        if episode_scores is not None:
            out["regret_floor"] = regret_floor(episode_scores)
    if raw is not None:
        out["amq_raw_rank_correlation"] = rank_correlation(amq_raw, raw)
    return out


# ---------------------------------------------------------------------------------------------
# Command line: python -m uepo.evaluate CHECKPOINT [--episodes N] [--video PATH]
# ---------------------------------------------------------------------------------------------


def load_bundle(path: str | Path) -> tuple[dict, Path]:
    """The policy bundle in a checkpoint file, or in a run directory (online.pt, else offline.pt)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "online.pt", path / "checkpoints" / "offline.pt",
                      path / "online.pt", path / "offline.pt"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds no checkpoints/online.pt or checkpoints/offline.pt: "
                                    "run `python -m uepo.train` first, or pass a checkpoint file")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torn or foreign file
        raise ValueError(f"checkpoint {path} cannot be read ({exc}); use another checkpoint of the "
                         "run") from exc
    if not isinstance(bundle, dict) or not {"policy", "selected", "env_id"} <= set(bundle):
        raise ValueError(f"{path} is not a uepo policy checkpoint (offline.pt or online.pt): it lacks "
                         "policy/selected/env_id; phase checkpoints such as critics.pt cannot act")
    return bundle, path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from uepo.envs import record_video, video_writer_problem

    parser = argparse.ArgumentParser(
        prog="python -m uepo.evaluate",
        description="Normalised score of a trained policy over deterministic episodes in the dataset's env.")
    parser.add_argument("checkpoint", help="checkpoints/online.pt or offline.pt, or a run directory")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to average (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode j is reset with seed + j (default 0)")
    parser.add_argument("--sub-policy", type=int, default=None,
                        help="which sub-policy acts (default: the selected one, i*)")
    parser.add_argument("--raw", action="store_true", help="act with the raw diffusion action μ^i_1")
    parser.add_argument("--video", default=None, metavar="PATH",
                        help="also render the first episode to this mp4 (MuJoCo offscreen, MUJOCO_GL=egl)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        bundle, path = load_bundle(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        print(f"uepo.evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        policy = MultiSeedPolicy.from_state(bundle["policy"])
    except (KeyError, RuntimeError) as exc:  # made by another version of uepo's networks
        print(f"uepo.evaluate: {path} does not fit this version of uepo's policy ({exc}); evaluate it "
              "with the uepo version that trained it, or retrain", file=sys.stderr)
        return 2
    if args.video and (problem := video_writer_problem()):  # say so before the episodes run
        print(f"uepo.evaluate: cannot write {args.video}: {problem}", file=sys.stderr)
        return 2
    dataset = bundle.get("dataset") or {}
    ref_min, ref_max = reference_scores(bundle["env_id"], dataset.get("dataset_id", ""), dataset) or (None, None)
    from uepo.api import unfinished_online

    if note := unfinished_online(bundle):
        print(f"uepo.evaluate: note: {path}: {note}", file=sys.stderr)
    index = int(bundle["selected"]) if args.sub_policy is None else args.sub_policy
    result = evaluate_policy(policy, bundle["env_id"], index, episodes=args.episodes, seed=args.seed,
                             raw=args.raw, dataset_id=dataset.get("dataset_id", ""),
                             ref_min_score=ref_min, ref_max_score=ref_max)
    print(f"{path}: {result['label']}")
    print(f"returns {[round(r, 1) for r in result['returns']]}")
    if args.video:
        def act(hist: np.ndarray) -> np.ndarray:
            h = torch.as_tensor(hist, dtype=torch.float32)
            with torch.no_grad():
                a = policy.base_action(h, index) if args.raw else policy.act(h, index, deterministic=True)
            return a.clamp(-1, 1).numpy().astype(np.float64)

        try:
            ret, steps = record_video(act, bundle["env_id"], args.video, seed=args.seed,
                                      history=policy.history)
        except RuntimeError as exc:
            print(f"uepo.evaluate: no video: {exc}", file=sys.stderr)
            return 3
        print(f"video of episode 0 ({steps} steps, return {ret:.1f}): {args.video}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
