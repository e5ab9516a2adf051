"""Commands that use a saved net: export it, encode data with it, reconstruct through
it, sample from it."""

from __future__ import annotations

from pathlib import Path

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
    from layerwise.data.sources import Dataset, check, loop_data, open_data

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
        return _err(f"'{args.model}' holds a {manifest['kind']} net; reconstruct needs a pretrained one "
                    "(runs/NAME/pretrained): a classifier has no way down")
    data, _ = _inputs(args.data, model.n_visible, model.visible, device)
    xs, outs, sq = [], [], 0.0
    with torch.no_grad():
        for xb, _ in data.chunks(10000):
            r = reconstruct_batch(model, xb.to(device))
            outs.append(r.cpu().numpy())
            if len(xs) < 1:
                xs.append(xb[:16].cpu().numpy())
            sq += float(((xb.to(device) - r) ** 2).sum())
    recon = np.concatenate(outs)
    save_npz(args.out, x=recon)
    print(f"wrote reconstructions of {len(recon)} samples to {args.out} (mean squared error "
          f"{sq / recon.size:.4g} per input)")
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
    from layerwise.data.sources import MNIST_NPZ, cache_dir, load_splits

    try:
        cfg = config.from_recorded(manifest["config"])
        if cfg.data.source == "mnist" and not (cache_dir() / MNIST_NPZ).exists():
            return None
        test = load_splits(cfg.data, visible=cfg.model.visible).test
    except (ValueError, OSError, KeyError, TypeError, ImportError):
        return None
    return None if test is None else test.head(16)[0]
