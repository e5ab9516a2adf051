"""Commands that use a saved net: evaluate it, predict with it, list the saved nets,
export it, encode data with it, reconstruct through it, sample from it."""

from __future__ import annotations

import sys
from pathlib import Path

from layerwise._checks import InvalidInput
from layerwise._files import check_out
from layerwise.cli.commands import _err


def cmd_export(args) -> int:
    from layerwise.export import export

    path = export(args.model, args.format, args.out, force=args.force)
    print(f"wrote {args.format} to {path} ({path.stat().st_size} bytes)")
    return 0


def _model(folder, device: str, threads: int | None = None):
    from layerwise import runtime
    from layerwise.storage.artifacts import load_model

    rt = runtime.apply(threads, device=device)
    model, manifest = load_model(folder)
    return model.to(rt.device), manifest, rt.device


def _inputs(path, n_inputs: int, visible: str, device):
    """The data of ``path`` checked against the net, as chunks (x, y) on ``device``; and
    whether the file has labels."""
    from layerwise.data.sources import Dataset, check, open_data
    from layerwise.data.splits import loop_data

    ds = check(open_data(path), visible=visible, n_inputs=n_inputs)
    has_labels = ds.y is not None if isinstance(ds, Dataset) else ds.has_labels
    return loop_data(ds, labels=has_labels), has_labels


def _n_inputs(model, manifest) -> int:
    return model.n_visible if manifest["kind"] == "pretrained" else manifest["architecture"]["sizes"][0]


def _visible(model, manifest) -> str:
    return getattr(model, "visible", "bernoulli") if manifest["kind"] == "pretrained" else "bernoulli"


def cmd_encode(args) -> int:
    import numpy as np
    import torch

    from layerwise.use import activation_fn, save_npz

    if args.out:  # a refused --out stops the command before any work
        check_out(args.out, args.force)
    model, manifest, device = _model(args.model, args.device, args.threads)
    fn = activation_fn(model, manifest, args.layer)
    data, has_labels = _inputs(args.data, _n_inputs(model, manifest), _visible(model, manifest), device)
    feats, labels = [], []
    with torch.no_grad():
        for xb, yb in data.chunks(10000):
            feats.append(fn(xb.to(device)).cpu().numpy())
            if has_labels and yb is not None:
                labels.append(yb.cpu().numpy())
    x = np.concatenate(feats)
    arrays = {"x": x, **({"y": np.concatenate(labels)} if labels else {})}
    save_npz(args.out, **arrays)
    print(f"wrote {x.shape[1]} features of layer {args.layer or 'top'} for {len(x)} samples to {args.out}")
    return 0


def cmd_reconstruct(args) -> int:
    import numpy as np
    import torch

    from layerwise.use import image_side, reconstruct_batch, save_npz

    if args.out:  # a refused --out stops the command before any work
        check_out(args.out, args.force)
    model, manifest, device = _model(args.model, args.device, args.threads)
    if manifest["kind"] != "pretrained":
        return _err(
            f"'{args.model}' holds a {manifest['kind']} net; reconstruct needs a pretrained one "
            "(runs/NAME/pretrained): a classifier has no way down"
        )
    data, _ = _inputs(args.data, model.n_visible, model.visible, device)
    xs: list = []
    outs: list = []
    sq = 0.0
    with torch.no_grad():
        for xb, _ in data.chunks(10000):
            r = reconstruct_batch(model, xb.to(device))
            outs.append(r.cpu().numpy())
            if len(xs) < 1:
                xs.append(xb[:16].cpu().numpy())
            sq += float(((xb.to(device) - r) ** 2).sum())
    recon = np.concatenate(outs)
    save_npz(args.out, x=recon)
    print(
        f"wrote reconstructions of {len(recon)} samples to {args.out} (mean squared error "
        f"{sq / recon.size:.4g} per input)"
    )
    if args.png:
        side = image_side(model.n_visible)
        if side is None:
            return _err(f"--png draws square images; {model.n_visible} inputs are not a square")
        from layerwise.reporting.plots import image_rows

        image_rows([("inputs", xs[0]), ("reconstructions", recon[: len(xs[0])])], side, args.png)
        print(f"wrote {args.png}")
    return 0


def cmd_sample(args) -> int:
    from layerwise.use import image_side, sample, save_npz

    if args.out:  # a refused --out stops the command before any work
        check_out(args.out, args.force)
    model, manifest, device = _model(args.model, args.device, args.threads)
    if manifest["kind"] != "pretrained":
        return _err(f"'{args.model}' holds a {manifest['kind']} net; sample needs a pretrained stack of RBMs")
    if not (args.out or args.png):
        return _err("sample needs --png FILE or --out FILE.npz (or both): where to put the samples")
    v = sample(model, args.n, steps=args.steps, seed=args.seed, label=args.label).cpu().numpy()
    if args.out:
        save_npz(args.out, x=v)
        print(f"wrote {len(v)} samples to {args.out}")
    if args.png:
        side = image_side(model.n_visible)
        if side is None:
            return _err(f"--png draws square images; {model.n_visible} inputs are not a square")
        from layerwise.reporting.plots import image_grid

        label = "" if args.label is None else f", label {args.label}"
        image_grid(v, side, args.png, title=f"{len(v)} samples{label}, {args.steps} Gibbs steps in the top RBM")
        print(f"wrote {args.png}")
    return 0


def cmd_show(args) -> int:
    """The pictures of a saved net: filters, and (from its pretrained stack) reconstructions
    of test images and samples."""
    import torch

    from layerwise.reporting import plots
    from layerwise.storage.artifacts import load_model, read_manifest
    from layerwise.use import write_pictures

    model, manifest, device = _model(args.model, args.device, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    first = model.layers[0].weight if manifest["kind"] == "pretrained" else next(model.parameters())
    plots.filters(first.detach().cpu(), out / "filters.png")
    written = ["filters.png"] if (out / "filters.png").exists() else []
    dbn = model if manifest["kind"] == "pretrained" else None
    sibling = Path(args.model).parent / "pretrained"
    if dbn is None and sibling.is_dir() and read_manifest(sibling)["weights_sha256"] == manifest.get("parent"):
        dbn = load_model(sibling)[0].to(device)  # the run's own backup: the stack this net was fine-tuned from
    if dbn is None:
        print("no pretrained stack found beside this net (its parent): reconstructions and samples need one")
    else:
        x = None
        if args.data:
            data, _ = _inputs(args.data, dbn.n_visible, dbn.visible, device)
            x = next(iter(data.chunks(16)))[0]
        else:
            x = _recorded_test_inputs(manifest)
        written += write_pictures(out, dbn, None if x is None else torch.as_tensor(x), steps=args.steps)
    if not written:
        return _err(f"nothing to draw: the inputs of '{args.model}' are not square images")
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _recorded_test_inputs(manifest):
    """The first test inputs of the data a net was trained on, where they can be read
    without a download; None otherwise."""
    from layerwise import config
    from layerwise.data.sources import MNIST_NPZ, cache_dir
    from layerwise.data.splits import load_splits

    try:
        cfg = config.from_recorded(manifest["config"])
        if cfg.data.source == "mnist" and not (cache_dir() / MNIST_NPZ).exists():
            return None
        test = load_splits(cfg.data, visible=cfg.model.visible).test
    except (ValueError, OSError, KeyError, TypeError, ImportError):
        return None
    return None if test is None else test.head(16)[0]


def _classifier(path):
    """(the finetuned net, its manifest, the config it was trained with)."""
    from layerwise import config
    from layerwise.storage.artifacts import load_model

    model, manifest = load_model(path)
    if manifest["kind"] != "finetuned":
        raise InvalidInput(f"'{path}' holds a {manifest['kind']} net; evaluate and predict need a finetuned one")
    try:
        cfg = config.from_recorded(manifest["config"])
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidInput(f"'{path}/manifest.json' is corrupt: its config does not read ({e})") from None
    return model, manifest, cfg


def cmd_evaluate(args) -> int:
    from layerwise import runtime
    from layerwise.data.sources import check, open_data
    from layerwise.data.splits import load_splits, loop_data
    from layerwise.training.finetune import evaluate

    rt = runtime.apply(args.threads, device=args.device)
    model, manifest, cfg = _classifier(args.model)
    model.to(rt.device)
    arch = manifest["architecture"]
    if args.data:  # a .npz, or a .npy / folder of shards streamed from disk
        ds = open_data(args.data, require_labels=True)
    else:
        test = load_splits(cfg.data, visible=cfg.model.visible, seed=cfg.seed, report=print).test
        if test is None:
            return _err(f"the config of '{args.model}' names no test data; pass --data FILE.npz")
        ds = test
    ds = check(ds, visible=cfg.model.visible, n_inputs=arch["sizes"][0], n_labels=arch["n_labels"])
    loss, acc = evaluate(model, loop_data(ds))
    print(f"data: {ds.name} ({len(ds)} samples)")
    print(f"loss: {loss:.4f}")
    print(f"test accuracy: {100 * acc:.2f}%")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from layerwise import runtime
    from layerwise._files import atomic_write, check_out
    from layerwise.data.sources import Dataset, check, open_data
    from layerwise.data.splits import loop_data
    from layerwise.training.finetune import predict_proba

    rt = runtime.apply(args.threads, device=args.device)
    out = check_out(args.out, args.force) if args.out else None
    model, manifest, cfg = _classifier(args.model)
    model.to(rt.device)
    arch = manifest["architecture"]
    ds = check(open_data(args.data), visible=cfg.model.visible, n_inputs=arch["sizes"][0], n_labels=arch["n_labels"])
    proba = predict_proba(model, loop_data(ds, labels=False)).numpy()
    labels = proba.argmax(1)
    if out is not None:
        atomic_write(out, lambda f: np.savez(f, labels=labels, probabilities=proba))
        print(f"wrote labels and probabilities of {len(labels)} samples to {args.out}")
    else:
        print("index,label,probability")
        for i, (lab, p) in enumerate(zip(labels, proba.max(1))):
            print(f"{i},{lab},{p:.4f}")
    if isinstance(ds, Dataset) and ds.y is not None:
        print(f"accuracy against the file's labels: {100 * float((labels == ds.y).mean()):.2f}%", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from layerwise.storage.catalog import find_artifacts, table

    if not Path(args.dir).is_dir():
        return _err(f"'{args.dir}' is not a folder")
    rows = find_artifacts(args.dir)
    if args.format == "json":
        import json

        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no layerwise models under '{args.dir}'")
    else:
        print(table(rows))
    return 0
