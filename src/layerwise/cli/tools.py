"""Commands that take a saved net to other tools: export."""

from __future__ import annotations

from pathlib import Path

from layerwise.cli.commands import _err


def cmd_export(args) -> int:
    from layerwise.export import export

    out = Path(args.out)
    if out.exists() and not out.is_dir() and not args.force:
        return _err(f"--out '{out}' already exists; pass --force to replace it")
    path = export(args.model, args.format, out)
    print(f"wrote {args.format} to {path} ({path.stat().st_size} bytes)")
    return 0
