"""The command line of ``python -m uepo.train``: flags for every config field, built from the schema.

A field is set as ``--section.field value``, or ``--field value`` when its name is unique across
sections. Resolution: preset -> ``--config FILE.yaml`` -> shorthand flags -> field flags.
``--resume RUN_DIR`` starts from that run's own ``config.yaml`` instead of a preset, so a bare
``--resume RUN_DIR`` continues the run as it was started; flags given with it must agree with it
(``uepo.api.check_resume`` lists the differences).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from uepo.config import SECTIONS, SPEC_3E, Config, apply_overrides, load_run_yaml, load_yaml, preset, validate

# Shorthand flags (the paper's comparisons and ablations) -> overrides.
SHORTHANDS: dict[str, tuple[str, dict[str, Any]]] = {
    "--no-divergence": ("no adaptive perturbation in the sampler", {"pretrain": {"divergence": False}}),
    "--no-seq-kl": ("no sequence-level KL term in L_B", {"pretrain": {"seq_kl": False}}),
    "--no-augmentation": ("no diffusion augmentation of the dynamics data",
                          {"dynamics": {"augmentation": False}}),
    "--spec-3e": ("phase E at SPEC §3E's values (γ 0.99, clip 0.05, lr_actor 2e-5; the defaults are 0.995, 0.2 and "
                  "2e-4 for locomotion, docs/RESULTS.md 5b and 5d)", SPEC_3E),
    "--download": ("let Minari download the dataset", {"download": True}),
    "--resume": ("continue run_dir from its checkpoints", {"resume": True}),
}


def _field_index() -> tuple[dict[str, tuple[str | None, dataclasses.Field]], set[str]]:
    """flag name -> (section or None, field); and the names that are ambiguous without a section."""
    index: dict[str, tuple[str | None, dataclasses.Field]] = {}
    seen: dict[str, int] = {}
    for fl in dataclasses.fields(Config):
        if fl.name not in SECTIONS:
            index[fl.name] = (None, fl)
            seen[fl.name] = seen.get(fl.name, 0) + 1
    for sec in SECTIONS:
        for fl in dataclasses.fields(getattr(Config(), sec)):
            index[f"{sec}.{fl.name}"] = (sec, fl)
            seen[fl.name] = seen.get(fl.name, 0) + 1
    ambiguous = {name for name, count in seen.items() if count > 1}
    return index, ambiguous


def build_parser(prog: str = "python -m uepo.train") -> argparse.ArgumentParser:
    index, ambiguous = _field_index()
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the UEPO pipeline on a Minari dataset: offline phases A–D, then online PPO (E).",
        epilog="Fields can also be set as --section.field; unique field names also as --field.",
    )
    parser.add_argument("--config", default=None, help="YAML file of overrides (applied after the preset)")
    for flag, (help_text, _) in SHORTHANDS.items():
        dest = "short_" + flag[2:].replace("-", "_")
        if flag == "--resume":  # --resume RUN_DIR, or --resume with --run_dir
            parser.add_argument(flag, nargs="?", const=True, default=False, metavar="RUN_DIR", dest=dest,
                                help=help_text + " (RUN_DIR: the run directory to continue, with the "
                                "config it was started with)")
        else:
            parser.add_argument(flag, action="store_true", dest=dest, help=help_text)
    for name, (sec, fl) in index.items():
        default = getattr(getattr(Config(), sec) if sec else Config(), fl.name)
        flags = [f"--{name}"]
        if sec and fl.name not in ambiguous:
            flags.append(f"--{fl.name}")
        if sec is None and name in ("resume", "download"):
            continue  # given by the shorthand flags above
        group = parser if sec is None else _group(parser, sec)
        group.add_argument(*flags, dest="field__" + name.replace(".", "__"), default=None, metavar="V",
                           help=f"{fl.metadata.get('help', '')} (default {default!r})")
    return parser


def _group(parser: argparse.ArgumentParser, sec: str) -> argparse._ArgumentGroup:
    # kept on the parser itself: a cache keyed by id(parser) hands a new parser a dead one's groups
    groups = parser.__dict__.setdefault("_uepo_groups", {})
    if sec not in groups:
        groups[sec] = parser.add_argument_group(f"{sec} ({type(getattr(Config(), sec)).__name__})")
    return groups[sec]


def run_config(run_dir: Path) -> Config:
    """The config a run was started with (its config.yaml on top of its preset, so a field the run
    predates takes that preset's value)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"--resume: {path} does not exist; pass the run_dir of an earlier run")
    saved = load_run_yaml(path)
    cfg = preset(str(saved.get("preset", Config().preset)))
    return apply_overrides(cfg, saved)


def parse_args(argv: list[str] | None = None) -> Config:
    """preset (or the resumed run's config) -> YAML -> shorthands -> field flags -> validated ``Config``."""
    args = build_parser().parse_args(argv)
    values = vars(args)
    cli: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith("field__") and value is not None:
            parts = key[len("field__"):].split("__")
            if len(parts) == 2:
                cli.setdefault(parts[0], {})[parts[1]] = value
            else:
                cli[parts[0]] = value
    if isinstance(args.short_resume, str):
        cli["run_dir"] = args.short_resume
    file_over = load_yaml(Path(args.config)) if args.config else {}
    if args.short_resume and cli.get("run_dir"):
        cfg = run_config(Path(cli["run_dir"]))
    else:
        cfg = preset(str(cli.get("preset", file_over.get("preset", Config().preset))))
    apply_overrides(cfg, file_over)
    for flag, (_, over) in SHORTHANDS.items():
        if values["short_" + flag[2:].replace("-", "_")]:
            apply_overrides(cfg, over)
    apply_overrides(cfg, cli)
    validate(cfg)
    return cfg
