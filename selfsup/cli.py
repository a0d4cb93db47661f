"""The ``selfsup`` command: train, eval, export, embed, prepare, tokenizer, recipes."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from selfsup.config import DEFAULT_RECIPE, ConfigError, apply_overrides, list_recipes, load_recipe, read_yaml, validate
from selfsup.export import EXPORT_FORMATS

EPILOG = """overrides are dotted keys checked against the recipe schema, e.g.
  selfsup train --recipe simclr_digits optim.lr=0.3 train.epochs=50 data.batch_size=128
sections: method, data, views, model, optim, train, eval (see README)"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised learning, the cookbook runnable.")
    sub = p.add_subparsers(dest="cmd", required=True,
                           metavar="{train,eval,export,embed,prepare,tokenizer,recipes,launch}")

    t = sub.add_parser("train", help="pretrain a recipe, then evaluate it", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Pretrain a recipe (default: %s on the built-in digits), then run "
                                   "`selfsup eval` on the result." % DEFAULT_RECIPE)
    t.add_argument("--recipe", default=None, help="recipe name (see `selfsup recipes`) or YAML path")
    t.add_argument("--data", default=None, help="dataset path: an ImageFolder tree or folder of images, a path[,label] "
                   ".csv/.txt file list, a `selfsup prepare` pack, .tar shards (these stream at full resolution); "
                   ".npz, IDX or CIFAR folder (in RAM)")
    t.add_argument("--format", default=None, help="dataset format: auto, imagefolder, filelist, packed, shards, npz, "
                   "idx, cifar, digits")
    t.add_argument("--out", default=None, help="run directory (default: runs/<method>-<time>)")
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run exactly")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that already holds a run (its run files are removed)")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    t.add_argument("--dry-run", action="store_true", help="validate everything (recipe, data, backbone, views: one "
                   "small batch through them) and print the data summary and the plan; train nothing, write nothing")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.3")

    e = sub.add_parser("eval", help="evaluate a run or exported weights: kNN, probes, spectra, ...",
                       epilog="examples:\n  selfsup eval runs/simclr-20261125-120000 --report\n"
                              "  selfsup eval --weights backbone.pt --recipe simclr_digits model.backbone=resnet18",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Evaluate a run's frozen backbone (or exported weights) with eval.protocols; "
                                   "prints a table and writes eval.json.")
    e.add_argument("run_dir", nargs="?", help="a run directory (or use --weights; then positionals are overrides)")
    e.add_argument("--weights", default=None, help="an exported backbone state dict (selfsup export)")
    e.add_argument("--recipe", default=None, help="with --weights: the recipe giving model.* and data.*")
    e.add_argument("--data", default=None, help="with --weights: dataset path (default: the recipe's)")
    e.add_argument("overrides", nargs="*", help="with --weights: dotted overrides, e.g. model.backbone=resnet18")
    e.add_argument("--report", action="store_true", help="also write report.html and report.md")
    e.add_argument("--protocols", nargs="+", default=None, metavar="P",
                   help="override eval.protocols: knn linear mlp lowshot retrieval rankme alpha_req spectrum_auc "
                        "rank lidar image_linear guillotine finetune dense_miou (masks: data.format=digit_scenes)")

    x = sub.add_parser("export", help="write the backbone weights alone, for torchvision, timm or safetensors",
                       description="Write the backbone's weights (the encoder evaluation uses) in a format the plain "
                                   "library model loads with strict=True, with the normalisation and image size; "
                                   "prints the lines that build that model and load the file.")
    x.add_argument("run_dir")
    x.add_argument("--format", default="state_dict", choices=EXPORT_FORMATS,
                   help="state_dict (default: a plain .pt state dict, as `selfsup eval --weights` reads), torchvision "
                        "(ResNets), timm (timm: backbones), safetensors (any; metadata in the header)")
    x.add_argument("--out", default=None, help="output file (default: RUN_DIR/backbone.pt, or backbone.safetensors)")

    m = sub.add_parser("embed", help="write embeddings of a folder, file list or dataset (.npy, .parquet, .csv)",
                       epilog="examples:\n  selfsup embed runs/simclr-20261125-120000 --data photos/ --out emb.parquet\n"
                              "  selfsup embed --weights backbone.pt --recipe simclr_digits --data list.csv --out e.npy",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Embed images with the evaluation transform (resize, centre crop, the run's "
                                   "normalisation), streamed, and write one row per image with its file path and "
                                   "label, if any; the format follows the suffix of --out.")
    m.add_argument("run_dir", nargs="?", help="a run directory (or use --weights; then positionals are overrides)")
    m.add_argument("--weights", default=None, help="an export (selfsup export): .pt state dict or .safetensors")
    m.add_argument("--recipe", default=None, help="with --weights: the recipe giving model.* (and data.*)")
    m.add_argument("--data", default=None, help="images to embed: a folder, an ImageFolder tree, a path[,label] file "
                   "list, a pack, shards, or any dataset `selfsup train --data` reads (default: the recipe's data)")
    m.add_argument("--format", default=None, help="dataset format, as for train (default: auto)")
    m.add_argument("--out", required=True, help="output file: .npy (+ .rows.csv), .parquet (pip install "
                   "'selfsup[parquet]') or .csv")
    m.add_argument("--features", default="backbone", choices=["backbone", "projector"],
                   help="backbone features (default) or the projector's output (run directories only)")
    m.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    m.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    m.add_argument("overrides", nargs="*", help="with --weights: dotted overrides, e.g. model.backbone=resnet18")

    r = sub.add_parser("prepare", help="pack an image dataset into one file per split, for fast loading",
                       description="Re-encode every image of SRC (an image folder, a file list or .tar shards) "
                                   "upright, longer side at most --max-side, as JPEG into the packed format at OUT "
                                   "(load it with --data OUT).")
    r.add_argument("src", metavar="SRC")
    r.add_argument("out", metavar="OUT")
    r.add_argument("--max-side", type=int, default=512, help="longer side of the stored images (default 512)")
    r.add_argument("--quality", type=int, default=90, help="JPEG quality, 1..100 (default 90)")
    r.add_argument("--labels", default="auto", choices=["auto", "folders", "none"], help="as data.labels")
    r.add_argument("--workers", type=int, default=None, help="decoding threads (default: the CPUs)")
    r.add_argument("--overwrite", action="store_true", help="replace a pack already at OUT")
    r.add_argument("--on-corrupt", default="skip", choices=["skip", "error"],
                   help="skip unreadable images (default, reported) or stop at the first")

    tok = sub.add_parser("tokenizer", help="BEiT's k-means patch tokenizer: selfsup tokenizer fit ...",
                         description="Tokenizers for BEiT's masked-token targets.")
    k = tok.add_subparsers(dest="action", required=True, metavar="{fit}").add_parser(
        "fit", help="fit the k-means patch tokenizer on your images",
        description="Fit the k-means patch tokenizer of a BEiT recipe on method.tokenizer_images training images "
                    "(a seeded sample) and write it to --out; train with method.tokenizer_path=OUT to reuse it "
                    "(beit fits one itself before the first epoch otherwise).")
    k.add_argument("--recipe", default="beit_digits", help="a beit recipe (default beit_digits)")
    k.add_argument("--data", default=None, help="dataset path, as for train")
    k.add_argument("--out", required=True, help="tokenizer file to write (.pt)")
    k.add_argument("overrides", nargs="*", help="dotted overrides, e.g. method.vocab_size=1024")

    rc = sub.add_parser("recipes", help="list the bundled recipes, or show one in full: recipes show NAME",
                        description="List the bundled recipes; `selfsup recipes show NAME [overrides]` prints the "
                                    "resolved recipe, every field with its description (YAML: save it, edit it, "
                                    "train it with --recipe FILE).")
    rc.add_argument("action", nargs="?", choices=["show"], help="show: print one recipe in full")
    rc.add_argument("name", nargs="?", help="recipe name or YAML path (with show)")
    rc.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.3")

    la = sub.add_parser("launch", help="submit selfsup train to SLURM (submitit); requeued and resumed on preemption",
                        epilog="example:\n  selfsup launch --slurm --nodes 2 --gpus-per-node 8 --partition gpu "
                               "--time 1440 -- train --recipe dino --data /data/imagenet --out runs/dino",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Submit the train command after `--` as one SLURM job (one task per node running "
                                    "torchrun with the c10d rendezvous); on preemption or timeout it is requeued and "
                                    "resumes from the run's last checkpoint. The train command needs --out RUN.")
    la.add_argument("--slurm", action="store_true", help="submit to SLURM (the only launcher)")
    la.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    la.add_argument("--gpus-per-node", type=int, default=1, help="GPUs, hence processes, per node (default 1)")
    la.add_argument("--partition", default=None, help="SLURM partition")
    la.add_argument("--time", type=int, default=60, help="time limit in minutes per job (default 60); it is requeued")
    la.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per node's task (data loaders)")
    la.add_argument("--mem", default=None, help="memory per node, e.g. 200G")
    la.add_argument("--account", default=None, help="SLURM account")
    la.add_argument("--qos", default=None, help="SLURM quality of service")
    la.add_argument("--constraint", default=None, help="SLURM node constraint")
    la.add_argument("--job-dir", default=None, help="submitit logs and pickles (default: RUN/../slurm/JOBID)")
    la.add_argument("--dry-run", action="store_true", help="print the sbatch script and each node's command only")
    la.add_argument("command", nargs=argparse.REMAINDER, help="-- train --recipe R --out RUN [overrides]")
    return p


def _fit_tokenizer(args: argparse.Namespace) -> None:
    import torch

    from selfsup.data import load_data_section
    from selfsup.methods.beit import fit_beit_tokenizer
    from selfsup.seeds import mix_seed
    from selfsup.views import default_mean_std

    recipe = load_recipe(args.recipe, list(args.overrides) + ([f"data.path={args.data}"] if args.data else []))
    if recipe.method.name != "beit" or recipe.method.target != "kmeans":
        raise ConfigError(f"selfsup tokenizer fit needs a beit recipe with method.target=kmeans, got "
                          f"{recipe.method.name}; use --recipe beit or beit_digits")
    split = load_data_section(recipe.data).train
    n = min(recipe.method.tokenizer_images, len(split))
    rows = torch.randperm(len(split), generator=torch.Generator().manual_seed(mix_seed(recipe.train.seed, 7)))[:n]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in default_mean_std(split.channels))
    batches = ((split.batch(rows[i:i + 256].sort().values)[0].float() / 255 - mean) / std for i in range(0, n, 256))
    tok = fit_beit_tokenizer(batches, recipe, args.out)
    print(f"tokenizer: {tok.vocab_size} tokens of {tok.patch_size} px patches fitted on {n} images -> {args.out}")


def _train(args: argparse.Namespace) -> None:
    import torch.distributed

    from selfsup.run_evaluation import evaluate_run
    from selfsup.rundir import check_run_dir
    from selfsup.train.loop import train
    from selfsup.train.session import make_run_dir

    extra = list(args.overrides)
    if args.data is not None:
        extra.append(f"data.path={args.data}")
    if args.format is not None:
        extra.append(f"data.format={args.format}")
    if args.resume:
        run = check_run_dir(args.resume)
        if args.recipe or args.overwrite:
            raise ConfigError("--resume continues the run with its own config.yaml; drop --recipe and --overwrite "
                              "(overrides still apply)")
        recipe = validate(apply_overrides(read_yaml(run / "config.yaml"), extra))
    else:
        recipe = load_recipe(args.recipe, extra)
        run = Path(args.out) if args.out else make_run_dir(recipe)
    args.run = run  # for the Ctrl-C message
    if args.dry_run:
        from selfsup.train.dry_run import dry_run

        dry_run(recipe, run)
        return
    run = train(recipe, run_dir=run, resume=bool(args.resume), overwrite=args.overwrite)
    if torch.distributed.is_initialized():  # under torchrun, rank 0 evaluates alone
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return
    if recipe.eval.at_end and not args.no_eval:
        evaluate_run(run)
    print(f"run directory: {run}")


def _eval(args: argparse.Namespace) -> None:
    from selfsup.run_evaluation import evaluate_run, evaluate_weights

    if args.weights:
        # with --weights there is no run directory: argparse put the first override in run_dir
        positional = ([args.run_dir] if args.run_dir else []) + list(args.overrides)
        not_overrides = [p for p in positional if "=" not in p]
        if not_overrides:
            raise ConfigError(f"with --weights, positional arguments are overrides like model.backbone=resnet18; got "
                              f"'{not_overrides[0]}' (a run directory is evaluated without --weights)")
        extra = positional + ([f"data.path={args.data}"] if args.data else [])
        evaluate_weights(args.weights, load_recipe(args.recipe, extra), protocols=args.protocols)
    elif args.run_dir:
        if args.overrides or args.recipe or args.data:
            raise ConfigError("a run directory is evaluated with its own config.yaml; --recipe, --data and overrides "
                              "go with --weights")
        evaluate_run(args.run_dir, report=args.report, protocols=args.protocols)
    else:
        raise ConfigError("give a run directory or --weights FILE (see selfsup eval --help)")


def _embed(args: argparse.Namespace) -> None:
    from selfsup.embed import embed

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.weights:
        positional = ([args.run_dir] if args.run_dir else []) + list(args.overrides)
        if any("=" not in p for p in positional):
            raise ConfigError("with --weights, positional arguments are overrides like model.backbone=resnet18 (a run "
                              "directory is embedded without --weights)")
        embed(args.out, weights=args.weights, recipe=load_recipe(args.recipe, positional), data=args.data,
              data_format=args.format, features=args.features, normalize=args.normalize, batch_size=args.batch_size)
    elif args.run_dir:
        if args.overrides or args.recipe:
            raise ConfigError("a run directory is embedded with its own config.yaml; --recipe and overrides go with "
                              "--weights")
        embed(args.out, run=args.run_dir, data=args.data, data_format=args.format, features=args.features,
              normalize=args.normalize, batch_size=args.batch_size)
    else:
        raise ConfigError("give a run directory or --weights FILE (see selfsup embed --help)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():  # warnings as one line each, each message once (data loads twice: train, eval)
        seen: set[str] = set()

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:
            if str(message) not in seen:
                seen.add(str(message))
                print(f"selfsup: warning: {message}", file=sys.stderr)

        from selfsup.data import DataWarning

        warnings.showwarning = one_line
        warnings.simplefilter("always", DataWarning)  # deduplicated by message above, not by source line
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from selfsup.data import DataError
    from selfsup.export import ExportError
    from selfsup.train.checkpoint import CheckpointError
    from selfsup.train.setup import TrainingError

    try:
        if args.cmd == "train":
            _train(args)
        elif args.cmd == "eval":
            _eval(args)
        elif args.cmd == "export":
            from selfsup.export import export_summary
            from selfsup.rundir import export_backbone

            print(export_summary(*export_backbone(args.run_dir, args.out, fmt=args.format)))
        elif args.cmd == "embed":
            _embed(args)
        elif args.cmd == "prepare":
            from selfsup.data.packed import write_packed

            write_packed(args.src, args.out, args.max_side, args.quality, args.labels, args.workers, args.on_corrupt,
                         args.overwrite)
        elif args.cmd == "tokenizer":
            _fit_tokenizer(args)
        elif args.cmd == "launch":
            from selfsup.launch import launch

            return launch(args)
        elif args.cmd == "recipes" and args.action == "show":
            from selfsup.explain import describe_recipe

            if not args.name:
                raise ConfigError("selfsup recipes show NAME: give a recipe name (see `selfsup recipes`) or a YAML path")
            print(describe_recipe(load_recipe(args.name, args.overrides), args.name), end="")
        elif args.cmd == "recipes":
            if args.name or args.overrides:
                raise ConfigError("`selfsup recipes` lists the recipes; use `selfsup recipes show NAME [overrides]`")
            rows = list_recipes()
            width = max(len(n) for n, _ in rows)
            for name, desc in rows:
                print(f"{name:<{width}}  {desc}")
    except (ConfigError, DataError, CheckpointError, FileNotFoundError, TrainingError, ExportError) as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, TrainingError) else 2
    except KeyboardInterrupt:
        hint = f"; {_interrupted_hint(getattr(args, 'run', None))}" if args.cmd == "train" else ""
        print(f"selfsup: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


def _interrupted_hint(run: Path | None) -> str:
    """What an interrupted `selfsup train` left behind, read from the run directory's checkpoint."""
    if run is None or not Path(run).is_dir():
        return "stopped before the run directory was created; nothing to resume"
    ckpt_path = Path(run) / "checkpoint.pt"
    if not ckpt_path.is_file():
        return (f"no checkpoint yet in {run} (none is written before the first epoch ends or train.checkpoint_every_* "
                f"is due); start again with --out {run} --overwrite")
    import torch

    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        return f"{ckpt_path} is unreadable ({type(e).__name__}); start again with --out {run} --overwrite"
    epochs = (state.get("config") or {}).get("train", {}).get("epochs")
    per_epoch, step = state.get("steps_per_epoch"), state.get("global_step")
    if per_epoch and step is not None:
        total = f" of {epochs * per_epoch}" if epochs else ""
        done, into = divmod(step, per_epoch)
        where = f"step {step}{total} (" + (f"{done} finished epoch{'s' if done != 1 else ''})" if not into else
                                           f"epoch {done + 1}, {into} of its {per_epoch} steps)")
        finished = epochs is not None and step >= epochs * per_epoch
    else:
        done = state.get("epoch", 0)
        where = f"{done} finished epoch{'s' if done != 1 else ''}" + (f" of {epochs}" if epochs else "")
        finished = epochs is not None and done >= epochs
    if finished:
        return f"training had finished ({ckpt_path} holds {where}); evaluate it with: selfsup eval {run}"
    return f"{ckpt_path} holds {where}; continue with: selfsup train --resume {run}"


if __name__ == "__main__":
    sys.exit(main())
