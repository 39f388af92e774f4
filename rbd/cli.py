"""Command line: `rbd train`, `download`, `aggregate`, `render`, `plot`, `paper-vs-ours`,
`pick-lr`, `check-config`.

Every flag is named after its config key (`--batch-size` is `batch_size`), and
every choice is checked here, before any data is touched, with a message that
names the flag and the allowed values.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rbd.spec import BASES_VERSION


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, else an error naming the value."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _learning_rate(text: str) -> float | str:
    """A rate: a number, '2^k', or the authors' 'base_learning_rate(2^k)', which is checked
    here and kept as written until the run's batch size is known (`_batch_scaled_rates`)."""
    from rbd.spec import ConfigError
    from rbd.workflow.config import parse_lr

    try:
        lr = parse_lr(float(text) if _is_number(text) else text, batch_size=1)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("lr: ")) from None
    return text if text.strip().startswith("base_learning_rate") else lr


def _batch_scaled_rates(args: argparse.Namespace) -> None:
    """--lr/--sgd-lr 'base_learning_rate(2^k)' trains at 2^k x --batch-size, as the
    authors' config_base_learning_rate (and the workflow's configs) read it."""
    from rbd.workflow.config import parse_lr

    for name in ("lr", "sgd_lr"):
        if isinstance(value := getattr(args, name), str):
            setattr(args, name, parse_lr(value, name, batch_size=args.batch_size))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


TRAIN_HELP = "train one run; resumes from DIR/checkpoint.pt if present"
DOWNLOAD_HELP = "fetch a data set into the data directory (needs internet, unless --from)"


def _add_train_parser(sub) -> None:
    """`rbd train`: one flag per field of rbd.spec's TrainConfig, named, typed, described and
    defaulted by the field's metadata (`rbd.spec.run.setting`), plus --out."""
    import dataclasses

    # The train extra first: without it, the missing numpy fails here, in one line, before
    # torch is imported (and warns that numpy is missing).
    import numpy  # noqa: F401

    import rbd.train.data  # noqa: F401
    from rbd.spec import TrainConfig

    p = sub.add_parser("train", help=TRAIN_HELP)
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta["flag"]:
            continue
        names = ["--" + f.name.replace("_", "-")]
        if f.name == "distribution":
            names.append("--dist")
        options: dict = {"help": meta["help"]}
        if f.default is dataclasses.MISSING:
            if meta["cli_default"] is None:
                options["required"] = True
            else:
                options["default"] = meta["cli_default"]
        else:
            options["default"] = f.default
        if isinstance(f.default, bool):
            options["action"] = argparse.BooleanOptionalAction
        elif meta["choices"] is not None:
            options["choices"] = meta["choices"]
        elif meta["kind"] is not None:
            options["type"] = _FLAG_TYPES[meta["kind"]]
        p.add_argument(*names, **options)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.set_defaults(func=_cmd_train)


_FLAG_TYPES = {
    "positive_int": _positive_int,
    "non_negative_int": _non_negative_int,
    "positive_float": _positive_float,
    "float": float,
    "lr": _learning_rate,
}


def _train_config(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The TrainConfig the flags give, or one line naming the flag that cannot work."""
    from rbd.spec import NO_DISTRIBUTION, TrainConfig
    from rbd.train.settings import check_settings

    if args.method != "sgd" and args.dim < 1:
        parser.error(f"argument --dim: must be a positive integer for --method {args.method}")
    if args.method != "sgd" and args.distribution == NO_DISTRIBUTION:
        parser.error(f"argument --distribution: choose a distribution for --method {args.method}")
    if args.bases_version != BASES_VERSION:
        parser.error(
            f"argument --bases-version: this rbd draws version {BASES_VERSION} bases, not "
            f"{args.bases_version}; a run of version {args.bases_version} needs the rbd that "
            "made it (train into a new run directory instead)"
        )
    _batch_scaled_rates(args)
    values = {k: v for k, v in vars(args).items() if k not in ("func", "command", "out", "verbose")}
    cfg = TrainConfig(**values)
    try:
        check_settings(cfg)
    except ValueError as err:
        setting, _, why = str(err).partition(": ")
        parser.error(f"argument --{setting.replace('_', '-')}: {why}")
    return cfg


def _cmd_train(args, parser) -> int:
    from rbd.train.loop import train

    cfg = _train_config(args, parser)
    if cfg.workers is not None:
        from rbd.train.launch import launch

        record = launch(cfg, args.out)
    else:
        record = train(cfg, args.out)
    acc = record.get("final_val_acc")
    print(f"{record['status']}: {args.out} (val_acc {acc if acc is None else f'{acc:.2f}'}%)")
    return 0


def _add_download_parser(sub) -> None:
    from rbd.spec import DATASETS

    p = sub.add_parser("download", help=DOWNLOAD_HELP)
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="DIR",
        help="install mnist or fashion_mnist from DIR (its four IDX files, raw or .gz), "
        "checked, instead of downloading",
    )
    p.set_defaults(func=_cmd_download)


def _install_from_folder(args, parser) -> int:
    from rbd.train import data

    if args.dataset not in data.IDX_MD5:
        parser.error(
            f"argument --from: only {' and '.join(data.IDX_MD5)} can be installed from a "
            f"folder, not {args.dataset}"
        )
    try:
        files = data.install_from_folder(args.dataset, args.source, args.data_dir)
    except (data.RbdDataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path in files:
        print(f"installed {path}")
    print(f"{args.dataset}: {len(files)} files from {args.source} verified")
    return 0


def _cmd_download(args, parser) -> int:
    from rbd.train import data

    if args.source is not None:
        return _install_from_folder(args, parser)
    files = data.download_dataset(args.dataset, args.data_dir)
    print(
        f"{args.dataset}: {len(files)} files verified under {data.resolve_data_dir(args.data_dir)}"
    )
    return 0


def _add_aggregate_parser(sub) -> None:
    p = sub.add_parser("aggregate", help="aggregate finished runs into a tidy table (CSV)")
    p.add_argument("--experiment", required=True)
    p.add_argument(
        "--kind",
        default="method_table",
        help="the experiment's kind (config key experiments.X.kind)",
    )
    p.add_argument("--out", required=True, type=Path, help="CSV to write")
    p.add_argument("runs", nargs="+", type=Path, help="run.json files (or their directories)")
    p.set_defaults(func=_cmd_aggregate)


def _cmd_aggregate(args, parser) -> int:
    from rbd.report.kinds import KINDS
    from rbd.report.tables import experiment_table
    from rbd.spec.io import write_text

    if args.kind not in KINDS:
        parser.error(
            f"argument --kind: invalid choice {args.kind!r} (choose from {', '.join(KINDS)})"
        )
    table = experiment_table(args.runs, args.experiment, args.kind)
    write_text(args.out, table.to_csv(index=False))
    print(f"{args.experiment}: {len(table)} rows -> {args.out}")
    return 0


def _add_render_parser(sub) -> None:
    from rbd.report.kinds import TABLE_KINDS

    p = sub.add_parser("render", help="render an aggregated table as PDF, Markdown and LaTeX")
    p.add_argument("--experiment", required=True)
    p.add_argument("--kind", default="method_table", choices=TABLE_KINDS)
    p.add_argument("--description", default=None, help="what was run (the caption)")
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--pdf", type=Path)
    p.add_argument("--md", type=Path)
    p.add_argument("--tex", type=Path)
    p.set_defaults(func=_cmd_render)


def _cmd_render(args, parser) -> int:
    import pandas as pd

    from rbd.report.tables import render

    table = pd.read_csv(args.csv, keep_default_na=False, na_values=[""])
    render(
        table,
        args.experiment,
        kind=args.kind,
        description=args.description,
        pdf=args.pdf,
        md=args.md,
        tex=args.tex,
    )
    return 0


def _add_plot_parser(sub) -> None:
    from rbd.report.kinds import KINDS

    p = sub.add_parser("plot", help="draw an experiment's figure (PDF) from its tidy CSV")
    p.add_argument("--experiment", required=True)
    p.add_argument("--kind", required=True, choices=tuple(KINDS))
    p.add_argument("--description", default=None, help="what was run (the title)")
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--pdf", required=True, type=Path)
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args, parser) -> int:
    import pandas as pd

    from rbd.report.kinds import KINDS
    from rbd.report.plots import plot
    from rbd.report.style import save_pdf
    from rbd.report.tables import table_figure

    data = pd.read_csv(args.csv, keep_default_na=False, na_values=[""])
    if KINDS[args.kind].figure == "table":
        figure = table_figure(data, args.experiment, kind=args.kind, description=args.description)
    else:
        figure = plot(args.kind, data, args.description or args.experiment)
    save_pdf(figure, args.pdf)
    print(f"{args.experiment}: {args.pdf}")
    return 0


PAPER_VS_OURS_HELP = "draw the paper's Table 1 and 2 values beside ours (PDF or PNG)"


def _add_paper_vs_ours_parser(sub) -> None:
    p = sub.add_parser("paper-vs-ours", help=PAPER_VS_OURS_HELP)
    p.add_argument(
        "csvs",
        nargs="+",
        type=Path,
        metavar="CSV",
        help="the verification summary (docs/verification/full_protocol.csv) and/or the "
        "aggregated tables of experiments table1, table2 (results/tables/table1.csv, ...)",
    )
    p.add_argument("--out", required=True, type=Path, help="figure to write (.pdf or .png)")
    p.add_argument("--description", default=None, help="the title (default: names the CSVs)")
    p.set_defaults(func=_cmd_paper_vs_ours)


def _cmd_paper_vs_ours(args, parser) -> int:
    from rbd.report.comparison import comparison_cells, read_comparison
    from rbd.report.plots import plot_paper_vs_ours
    from rbd.report.style import save_figure

    if args.out.suffix.lower() not in (".pdf", ".png", ".svg"):
        parser.error(f"argument --out: write a .pdf, .png or .svg, not {args.out.name!r}")
    try:
        cells = comparison_cells(read_comparison(args.csvs))
    except (OSError, ValueError) as err:
        print(f"rbd paper-vs-ours: error: {err}", file=sys.stderr)
        return 1
    title = args.description or (
        "The paper's validation accuracy (%) after 100 epochs beside ours, from "
        + ", ".join(path.name for path in args.csvs)
    )
    save_figure(plot_paper_vs_ours(cells, title), args.out, dpi=150)
    n_ours, n_off = int(cells["ours"].notna().sum()), int(cells["off"].sum())
    print(f"{len(cells)} cells, {n_ours} of ours, {n_off} outside the bound -> {args.out}")
    return 0


def _add_pick_lr_parser(sub) -> None:
    p = sub.add_parser(
        "pick-lr",
        help="pick the best learning rate per method and pair from a sweep's CSV; "
        "write it as a learning_rates YAML snippet",
    )
    p.add_argument("--csv", required=True, type=Path, help="the sweep's tidy CSV (rbd aggregate)")
    p.add_argument("--out", type=Path, default=None, help="YAML to write (default: stdout)")
    p.set_defaults(func=_cmd_pick_lr)


def _cmd_pick_lr(args, parser) -> int:
    import pandas as pd

    from rbd.report.rates import best_learning_rates, lr_snippet
    from rbd.spec.io import write_text

    runs = pd.read_csv(args.csv, keep_default_na=False, na_values=[""])
    epochs = sorted(set(runs["epochs"])) if "epochs" in runs else []
    seeds = sorted(set(runs["seed"])) if "seed" in runs else []
    note = (
        f"Best rate by mean validation accuracy in {args.csv} ({len(runs)} runs, "
        f"epochs {epochs}, seeds {seeds}); rates where a seed diverged are skipped.\n"
        "Paste into a config to replace (or add to) its learning_rates."
    )
    text = lr_snippet(best_learning_rates(runs), note)
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text(args.out, text)
        print(f"best learning rates -> {args.out}")
    return 0


def _add_check_parser(sub) -> None:
    p = sub.add_parser("check-config", help="validate a workflow config and list its runs")
    p.add_argument("configs", nargs="+", type=Path, help="config files, later ones override")
    p.add_argument("--schema", type=Path, default=None)
    p.set_defaults(func=_cmd_check)


def _cmd_check(args, parser) -> int:
    from rbd.workflow.config import (
        DEFAULT_SCHEMA,
        ConfigError,
        experiment_runs,
        load_config_files,
        validate_config,
    )

    config = load_config_files(args.configs)
    try:
        validate_config(config, args.schema or DEFAULT_SCHEMA)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, runs in experiment_runs(config).items():
        print(f"{name}: {len(runs)} runs")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; for another ``command``, train's and download's options (whose
    choices come from modules that import torch) are left out, so that the table and
    figure jobs start without torch (about 2 s each)."""
    parser = argparse.ArgumentParser(
        prog="rbd", description="Random-bases descent: train runs and build the paper's tables."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb, add, text in (
        ("train", _add_train_parser, TRAIN_HELP),
        ("download", _add_download_parser, DOWNLOAD_HELP),
    ):
        if command in (None, verb):
            add(sub)
        else:
            sub.add_parser(verb, help=text)
    _add_aggregate_parser(sub)
    _add_render_parser(sub)
    _add_plot_parser(sub)
    _add_paper_vs_ours_parser(sub)
    _add_pick_lr_parser(sub)
    _add_check_parser(sub)
    return parser


# Packages of the extras (pyproject.toml) that the command needs beyond the core's torch.
EXTRA_OF_MODULE = {
    "torchvision": "train",
    "numpy": "train",
    "yaml": "train",
    "tqdm": "train",
    "mlxtend": "train",
    "pandas": "workflow",
    "matplotlib": "workflow",
    "seaborn": "workflow",
    "jsonschema": "workflow",
    "snakemake": "workflow",
}


def _missing_extra(err: ModuleNotFoundError) -> str | None:
    """The install line that brings a module an extra provides, or None for any other."""
    extra = EXTRA_OF_MODULE.get((err.name or "").partition(".")[0])
    if extra is None:
        return None
    return (
        f"this needs {err.name!r}, which the core install (torch only) lacks: "
        f"pip install 'rbd[{extra}]'"
    )


def _command(argv: list[str]) -> str | None:
    """The verb: the first word that is not an option (the only global one, -v, takes no
    value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _is_user_error(err: Exception) -> bool:
    """A bad run directory, data set or configuration: one line that says what to fix, no
    traceback (rbd.spec.UserError and its kinds)."""
    from rbd.spec import UserError

    return isinstance(err, UserError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(_command(argv))
    except ModuleNotFoundError as err:
        # The light install (torch only) has the optimisers, not the command.
        if (advice := _missing_extra(err)) is None:
            raise
        print(f"rbd: error: {advice}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    try:
        return args.func(args, subparser)
    except ModuleNotFoundError as err:
        if (advice := _missing_extra(err)) is None:
            raise
        print(f"rbd {args.command}: error: {advice}", file=sys.stderr)
        return 1
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"rbd {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
