"""One function per ``layerwise`` command: each takes the parsed arguments, calls the
library and prints; it returns the exit status (2 for a clear error)."""

from __future__ import annotations

import sys
from pathlib import Path


def _say(line: str) -> None:
    """Print a progress line at once (piped output is block-buffered otherwise)."""
    print(line, flush=True)


def _err(msg: str) -> int:
    print(f"layerwise: error: {msg}", file=sys.stderr)
    return 2


def _say_above_the_bars(line: str) -> None:
    """Print a line while progress bars are drawn: tqdm clears the bar, prints the line
    at column 0, and draws the bar again below it."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _progress(args) -> tuple:
    """(the echo of each record, whether to draw progress bars): bars on a terminal only,
    and then every line goes through them, never into one."""
    bars = not args.quiet and sys.stderr.isatty()
    return (None if args.quiet else _say_above_the_bars if bars else _say), bars


def cmd_train(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.storage.runs import read_config
    from layerwise.training.distributed import run_worker, under_torchrun

    echo, bars = _progress(args)
    if args.resume:
        if args.recipe or args.name:
            return _err("--resume takes the run folder alone: its config.toml is the recipe")
        if args.max_memory:
            return _err("--max-memory applies to a new run; a resumed run reads its data as it started")
        saved = read_config(args.resume)
        runtime.apply(args.threads, saved.threads, device=args.device or saved.device, precision=saved.precision)
        result = jobs.resume(
            args.resume,
            workers=args.workers,
            allow_resize=args.allow_resize,
            max_restarts=args.max_restarts,
            threads=args.threads,
            device=args.device,
            progress=bars,
            echo=echo,
            control=args.control,
        )
        _print_result(result)
        return 0
    if not args.recipe:
        return _err("train needs a RECIPE (or --resume RUN_FOLDER)")
    cfg = config.load(args.recipe)
    if args.name is not None:
        cfg.name = config.check_name(args.name)
    _flags_into(cfg, args)  # recorded in the run's config.toml
    if under_torchrun():  # one worker of a distributed run (torchrun, or --workers)
        rt = runtime.apply(
            args.threads, cfg.threads, local_workers=runtime.local_workers(), device=cfg.device, precision=cfg.precision
        )
        run_worker(
            lambda: jobs.worker_main(cfg, args.runs_dir, echo=echo, device=args.device, control=args.control),
            timeout_minutes=cfg.distributed.timeout_minutes,
            on_result=_print_result,
            device=rt.device,
        )
    workers = args.workers or 1
    if not _advise_or_stop(cfg, args.strict, args.quiet, workers=workers):
        return 2
    if cfg.log.tensorboard:  # a folder that cannot be made stops the run before its folder exists
        Path(cfg.log.tensorboard).mkdir(parents=True, exist_ok=True)
    if workers > 1:
        result = jobs.train_workers(
            cfg, workers, runs_dir=args.runs_dir, max_restarts=args.max_restarts, echo=echo, control=args.control
        )
    else:
        runtime.apply(args.threads, cfg.threads, device=cfg.device, precision=cfg.precision)
        result = jobs.train(cfg, runs_dir=args.runs_dir, progress=bars, echo=echo, control=args.control)
    _print_result(result)
    return 0


def _flags_into(cfg, args) -> None:
    """The flags that a run records in its config.toml: --threads, --device, --max-memory, --tensorboard."""
    if getattr(args, "threads", None):
        cfg.threads = args.threads
    if getattr(args, "device", None):
        cfg.device = args.device
    if getattr(args, "max_memory", None):
        cfg.data.max_memory = args.max_memory
    if getattr(args, "tensorboard", None):
        cfg.log.tensorboard = args.tensorboard


def _print_result(result) -> None:
    print(f"pretraining {result.seconds_pretrain:.1f} s, fine-tuning {result.seconds_finetune:.1f} s")
    if result.validation_accuracy is not None:
        print(f"validation accuracy: {100 * result.validation_accuracy:.2f}%")
    if result.test_accuracy is not None:
        print(f"test accuracy: {100 * result.test_accuracy:.2f}%")
    else:
        print("test accuracy: n/a (the recipe names no test data)")
    print(f"run folder: {result.run_dir}", flush=True)


def _advise_or_stop(cfg, strict: bool, quiet: bool, workers: int = 1) -> bool:
    """Show the advisor's findings; False (stop before any work) on an error, or on a
    warning with --strict."""
    from layerwise.advice.rules import format_findings, recipe_findings

    findings, skipped = recipe_findings(cfg, workers=workers)
    blocking = [f for f in findings if f.severity == "error" or (strict and f.severity == "warning")]
    if findings and (blocking or not quiet):
        print(format_findings(findings), file=sys.stderr if blocking else sys.stdout, flush=True)
    if skipped and not quiet:
        print(_skipped_note(skipped), flush=True)
    if blocking:
        why = "errors" if any(f.severity == "error" for f in blocking) else "warnings (--strict)"
        _err(f"the recipe has {why}; nothing was run")
        return False
    return True


def _skipped_note(why: str) -> str:
    return f"note: the data was not inspected, so the rules on data (input range, labels, widths) were skipped: {why}"


def cmd_check(args) -> int:
    import json

    from layerwise import config
    from layerwise.advice.rules import format_findings, recipe_findings

    cfg = config.load(args.recipe)
    findings, skipped = recipe_findings(cfg, workers=args.workers, evidence=_evidence(args))
    if args.format == "json":
        print(
            json.dumps(
                {
                    "recipe": args.recipe,
                    "data_inspected": skipped is None,
                    "data_not_inspected": skipped,
                    "findings": [f.to_dict() for f in findings],
                },
                indent=2,
            )
        )
    else:
        print(format_findings(findings))
        if skipped:
            print(_skipped_note(skipped))
    bad = [f for f in findings if f.severity == "error" or (args.strict and f.severity == "warning")]
    return 2 if bad else 0


def cmd_probe_lr(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.training.distributed import run_worker, under_torchrun
    from layerwise.training.probe import geometric_grid

    cfg = config.load(args.recipe)
    grid = geometric_grid(args.low, args.high, args.points)
    echo = None if args.quiet else _say
    trial = {"grid": grid, "subset": args.subset, "epochs": args.epochs}
    _flags_into(cfg, args)
    if under_torchrun():  # one worker of `probe-lr --workers N`
        rt = runtime.apply(
            args.threads, cfg.threads, local_workers=runtime.local_workers(), device=cfg.device, precision=cfg.precision
        )
        run_worker(
            lambda: jobs.probe(cfg, **trial, echo=echo, in_group=True),
            timeout_minutes=cfg.distributed.timeout_minutes,
            on_result=lambda res: _print_probe(res, args),
            device=rt.device,
        )
    if args.workers > 1:
        res = jobs.probe_workers(
            args.recipe,
            args.workers,
            **trial,
            threads=args.threads,
            quiet=args.quiet,
            echo=_say,
            device=args.device,
            control=args.control,
        )
        _print_probe(res, args)
        return 0
    runtime.apply(args.threads, cfg.threads, device=cfg.device, precision=cfg.precision)
    _print_probe(jobs.probe(cfg, **trial, echo=echo), args)
    return 0


def _print_probe(res: dict, args) -> None:
    from layerwise.training.probe import write_results

    if res["workers"] > 1:
        print(
            f"{res['workers']} workers, averaging every {res['averaging_frequency']} batches "
            "(the rates are the workers' own: no lr_correction applied)"
        )
    for phase in ("pretrain", "finetune"):
        r = res[phase]
        if r.get("error"):
            print(f"{phase}: not probed: {r['error']}")
        elif r["largest_stable"] is None:
            print(f"{phase}: no stable rate in [{args.low:g}, {args.high:g}]; try lower rates")
        else:
            print(f"{phase}: largest stable rate {r['largest_stable']:g}, recommended {r['recommended']:g}")
    png, data = write_results(res, args.out)
    if png is not None:
        print(f"plot: {png}")
    print(f"data: {data}", flush=True)


def _evidence(args):
    """The lab findings that ``--findings`` names, else the published ones."""
    from layerwise import advice
    from layerwise.advice import evidence

    return evidence.load(args.findings) if args.findings else advice.PUBLISHED


def cmd_advise(args) -> int:
    import json

    from layerwise.advice.rules import suggest

    s = suggest(args.inputs, args.labels, workers=args.workers, samples=args.samples, findings=_evidence(args))
    if args.format == "json":
        print(json.dumps(s, indent=2))
        return 0
    print("suggested net: " + " -> ".join(map(str, s["layers"])))
    for name, item in s["hyperparameters"].items():
        print(f"  {name} = {item['value']}")
        print(f"      {item['why']}")
    return 0


def cmd_pretrain(args) -> int:
    from layerwise import config, jobs, runtime
    from layerwise.storage.runs import read_config

    echo, bars = _progress(args)
    if args.resume:
        if args.recipe or args.out:
            return _err("--resume takes the pretraining folder alone (plus --data/--epochs)")
        saved = read_config(args.resume, "staged pretraining folder")
        runtime.apply(args.threads, saved.threads, device=args.device or saved.device, precision=saved.precision)
        res = jobs.pretrain_stage(
            args.resume,
            data=args.data,
            epochs=args.epochs,
            device=args.device,
            max_memory=args.max_memory,
            progress=bars,
            echo=echo,
            control=args.control,
        )
        if res is None:
            print(f"nothing new to pretrain on: every shard of '{args.data}' was fed to an earlier stage")
            return 0
    else:
        if not (args.recipe and args.data and args.out):
            return _err("pretrain needs RECIPE --data FILE.npz --out FOLDER (or --resume FOLDER)")
        cfg = config.load(args.recipe, require_data=False)  # its data comes with --data
        _flags_into(cfg, args)
        runtime.apply(args.threads, cfg.threads, device=cfg.device, precision=cfg.precision)
        res = jobs.pretrain_stage(
            args.out, cfg=cfg, data=args.data, epochs=args.epochs, progress=bars, echo=echo, control=args.control
        )
    assert res is not None  # a first stage always trains
    print(f"stage {res.stage}: {res.seconds:.1f} s, {len(res.manifest['stages'])} stage(s) recorded")
    print(f"pretrained net: {res.artifact}")
    return 0


def cmd_finetune(args) -> int:
    from layerwise import config, jobs, runtime

    cfg = config.load(args.recipe)
    _flags_into(cfg, args)
    runtime.apply(args.threads, cfg.threads, device=cfg.device, precision=cfg.precision)
    echo, bars = _progress(args)
    res = jobs.finetune_pretrained(args.pretrained, cfg, args.out, progress=bars, echo=echo, control=args.control)
    print(f"fine-tuning {res.seconds_finetune:.1f} s")
    if res.test_accuracy is not None:
        print(f"test accuracy: {100 * res.test_accuracy:.2f}%")
    print(f"finetuned net: {res.run_dir} (parent {res.pretrained['weights_sha256'][:16]})")
    return 0


def cmd_data_fetch(args) -> int:
    from layerwise.data.sources import fetch_mnist

    if args.dataset != "mnist":
        return _err(f"unknown dataset {args.dataset!r}; 'mnist' is the one that is downloaded")
    path = fetch_mnist(report=print)
    print(f"mnist: {path}")
    return 0


def cmd_lab(args) -> int:
    from layerwise import runtime
    from layerwise.lab import run_lab

    if bool(args.data) != bool(args.test):
        return _err("--data needs --test (and --test needs --data): the lab measures accuracy on held-out test data")
    runtime.apply(args.threads, device="cpu")
    command = "layerwise lab " + " ".join(
        [*args.experiments, "--budget", args.budget] + (["--data", args.data, "--test", args.test] if args.data else [])
    )
    page = run_lab(
        args.experiments,
        budget=args.budget,
        data=args.data,
        test=args.test,
        out=args.out,
        say=None if args.quiet else _say,
        command=command,
    )
    print(f"the page: {page}")
    if args.publish:
        from layerwise.lab import publish

        print(f"published: {publish(args.out, args.publish)}")
    return 0
