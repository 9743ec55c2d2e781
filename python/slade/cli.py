"""The ``slade`` command: run the pipeline, evaluate, export, embed and search, list presets.

    slade run --preset fashion-mnist-ssl --out runs/fashion-mnist-ssl teacher.steps=200
    slade run --preset omniglot-ssl --layout folders --data my_images --out runs/mine
    slade evaluate runs/fashion-mnist-ssl/student_round1/final.safetensors
    slade presets
    slade export runs/fashion-mnist-ssl/student_round1/final.safetensors --out model.pt
    slade embed model.pt gallery_images/ --out gallery.safetensors
    slade search gallery.safetensors query.png -k 10 --grid results.png

Overrides are ``key=value`` with dotted keys of :class:`slade.config.Config`
(``teacher.optimizer.lr=3e-4``, ``student.variant=basis``, ``seed=2``).
Exit status: 0 on success, 2 for a usage, configuration or argument error (a bad value),
1 for other failures (missing data, bad files), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slade",
        description="SLADE semi-supervised metric learning: teacher, pseudo labels, student.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="train teacher and student and report both",
        description="Runs the whole pipeline of a preset and writes results.json, "
        "checkpoints and plots to OUT; a folder holding an interrupted run of the same "
        "configuration is resumed.",
    )
    run.add_argument("--preset", required=True, help="see `slade presets`")
    _data_arguments(run)
    run.add_argument("--out", metavar="DIR", help="output folder (default runs/PRESET)")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    run.add_argument("--seed", type=int, help="run seed")
    run.add_argument("--overwrite", action="store_true", help="delete an earlier run in OUT first")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard event files to DIR (log.tensorboard; one folder per run; "
        "view them with `tensorboard --logdir DIR`)",
    )
    run.add_argument(
        "--csv", action="store_true", help="also write history.csv beside each history.json"
    )
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    evaluate = commands.add_parser(
        "evaluate",
        help="retrieval metrics of a checkpoint",
        description="Embeds the test (or validation) split with a checkpoint's model and "
        "prints MAP@R, R-Precision, P@1, Recall@K and NMI. The protocol comes from --preset, "
        "or from the config.json of the run the checkpoint belongs to.",
    )
    evaluate.add_argument("checkpoint", help="a .safetensors checkpoint written by slade")
    evaluate.add_argument("--preset", help="protocol and evaluation settings of this preset")
    _data_arguments(evaluate)
    evaluate.add_argument(
        "--split", choices=("test", "val"), help="default: the config's data.evaluate_on"
    )
    evaluate.add_argument("--device", help="cpu, cuda or cuda:N")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    commands.add_parser("presets", help="list the presets and the data layouts")
    _deploy_commands(commands)
    return parser


def _deploy_commands(commands: Any) -> None:
    """export, embed and search: from a checkpoint to a searchable gallery."""
    export = commands.add_parser(
        "export",
        help="write a checkpoint's model as TorchScript, ONNX or safetensors",
        description="Writes the model of a checkpoint as a file that needs only torch "
        "(torchscript, safetensors) or onnxruntime (onnx), and OUT.json beside it with its "
        "input preprocessing (from the run's config.json, or --preset).",
    )
    export.add_argument("checkpoint", help="a .safetensors checkpoint written by slade")
    export.add_argument("--format", choices=("torchscript", "onnx", "safetensors"))
    export.add_argument("--out", required=True, metavar="PATH", help="the model file to write")
    export.add_argument("--preset", help="take the preprocessing from this preset's data")

    embed = commands.add_parser(
        "embed",
        help="embed a folder of images into a gallery index",
        description="Embeds every image file below FOLDER (sorted by path) with a "
        "checkpoint's or an exported model's preprocessing and writes a slade.Index "
        "(embeddings, the paths as ids, the model to embed queries with).",
    )
    embed.add_argument("model", help="a checkpoint or an exported model file")
    embed.add_argument("folder", help="the gallery images")
    embed.add_argument("--out", required=True, metavar="PATH", help="the index (.safetensors)")
    embed.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")

    search = commands.add_parser(
        "search",
        help="nearest gallery images of query images",
        description="Embeds the query images with the index's model and prints, per query, "
        "its k nearest gallery items (id and Euclidean distance), nearest first.",
    )
    search.add_argument("index", help="an index written by `slade embed` or Index.save")
    search.add_argument("queries", nargs="+", help="query image files or folders")
    search.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    search.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    search.add_argument("--grid", metavar="PNG", help="also draw the results as a grid")
    search.add_argument("--json", action="store_true", help="print the results as JSON")


def _data_arguments(command: argparse.ArgumentParser) -> None:
    """--layout, --data and --pool: which protocol reads which folders."""
    command.add_argument(
        "--layout",
        metavar="NAME",
        help="how the data folder is laid out, e.g. folders for your own images "
        "(sets data.protocol; default: the preset's; see `slade presets`)",
    )
    command.add_argument("--data", metavar="PATH", help="data folder (sets data.root)")
    command.add_argument(
        "--pool",
        metavar="PATH",
        help="unlabeled pool folder of the paper pairings (data.pool_root)",
    )


def _option_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The config fields --layout, --data, --pool and --device set."""
    from .data import PROTOCOLS
    from .errors import ConfigError

    if args.layout is not None and args.layout not in PROTOCOLS:
        raise ConfigError(
            f"--layout: unknown layout {args.layout!r}; expected one of {', '.join(PROTOCOLS)}"
        )
    options = {
        "data.protocol": args.layout,
        "data.root": args.data,
        "data.pool_root": args.pool,
        "device": args.device,
    }
    return {k: v for k, v in options.items() if v is not None}


def _log_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The log settings --tensorboard (DIR relative to the current folder) and --csv set."""
    options = {}
    if args.tensorboard is not None:
        options["log.tensorboard"] = os.path.abspath(args.tensorboard)
    if args.csv:
        options["log.csv"] = "true"
    return options


def _run(args: argparse.Namespace) -> int:
    from . import pipeline
    from .config import preset

    config = preset(args.preset)
    config.override(_option_overrides(args))
    if args.seed is not None:
        config.override({"seed": args.seed})
    config.override(_log_overrides(args))
    config.override(args.overrides)
    if args.no_progress:
        config.progress = False
    out = Path(args.out) if args.out else Path("runs") / args.preset
    result = pipeline.run(config, out=out, overwrite=args.overwrite)
    print(result.table())
    print(f"results: {out / 'results.json'}; plots: {out / 'plots'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from . import pipeline
    from .config import Config, preset
    from .errors import ConfigError, MissingFileError
    from .pipeline.run_folder import run_config_of

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise MissingFileError(f"no such checkpoint: {checkpoint}")
    if args.preset:
        config = preset(args.preset)
    else:
        saved = run_config_of(checkpoint)
        if saved is None:
            raise ConfigError(
                f"no config.json found beside {checkpoint}: pass --preset to say which data to use"
            )
        config = Config.from_dict(saved)
    config.override(_option_overrides(args))
    config.override(args.overrides)
    config.progress = False
    config.validate()
    split = args.split or config.data.evaluate_on
    metrics = pipeline.evaluate(checkpoint, config=config, split=split)
    if args.json:
        print(json.dumps(metrics, indent=1))
    else:
        print(pipeline.results_table([(checkpoint.name, metrics)], split=split))
        for key, value in metrics.items():
            print(f"  {key:<16} {value:.4f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .deploy import export

    card = export(args.checkpoint, args.out, args.format, config=args.preset)
    print(f"{card.format}: {args.out} (dim {card.model.dim}; how to feed it: {args.out}.json)")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .deploy import Index, embed, model_reference

    device = args.device or "cpu"
    found = embed(
        args.model,
        args.folder,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    index = Index(model=model_reference(args.model))
    index.add(found.embeddings.cpu(), ids=found.paths)
    index.save(args.out)
    print(f"{len(index)} images of {args.folder} -> {args.out}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from .deploy import search_images

    results = search_images(args.index, args.queries, args.k, device=args.device or "cpu")
    if args.grid:
        from .plots import search_grid

        search_grid(results, args.grid)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
        return 0
    for result in results:
        print(result.query)
        items = result.ids if result.ids is not None else result.indices
        for rank, (item, distance) in enumerate(zip(items, result.distances), start=1):
            print(f"  {rank:>3}  {distance:.4f}  {item}")
    return 0


def _presets() -> int:
    """The presets, one a line, then a blank line and the data layouts with their folders."""
    from .config import PRESETS
    from .data import PROTOCOLS

    width = max(len(name) for name in [*PRESETS, *PROTOCOLS])
    for name, (_, description) in PRESETS.items():
        print(f"{name:<{width}}  {description}")
    print("\ndata layouts (--layout NAME, default the preset's; its folders as --data / --pool):")
    for name, entry in PROTOCOLS.items():
        print(f"{name:<{width}}  {entry.description}")
        for root in entry.roots:
            optional = "" if root.required else " (optional)"
            print(f"{'':<{width}}    {root.flag}{optional}: {root.description}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slade`` console script and of ``python -m slade``."""
    parser = _parser()
    # Overrides may come before, between or after options: argparse leaves the ones after
    # an option that follows the positionals unparsed.
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    from .errors import InvalidArgumentError, SladeError

    try:
        if args.command == "run":
            return _run(args)
        commands = {"evaluate": _evaluate, "export": _export, "embed": _embed, "search": _search}
        if args.command in commands:
            return commands[args.command](args)
        return _presets()
    except InvalidArgumentError as err:
        print(f"slade: error: {err}", file=sys.stderr)
        return 2
    except (SladeError, FileNotFoundError) as err:
        print(f"slade: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slade: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
