"""Devices and random generators: the small mechanics every floor shares.

A ``torch.Generator`` lives on one device, and a draw for a CUDA tensor needs a CUDA
generator. The CPU and the ``meta`` device (shapes without data, used by the tests that
prove the device plumbing without a GPU) draw from a CPU generator.
"""

from __future__ import annotations

import hashlib

import torch


def generator_device(device) -> torch.device:
    """The device a generator must live on to draw tensors on ``device``."""
    device = torch.device(device)
    return torch.device("cpu") if device.type in ("cpu", "meta") else device


def bf16_products(precision: str, device) -> bool:
    """Whether a training step's products run in bf16: precision "bf16" on a device with
    bf16 autocast (the CPU or CUDA); elsewhere they run in fp32."""
    return precision == "bf16" and torch.device(device).type in ("cpu", "cuda")


def device_generator(device, seed: int) -> torch.Generator:
    """A generator for draws on ``device``, seeded with ``seed``."""
    return torch.Generator(generator_device(device)).manual_seed(seed)


def follow(generator: torch.Generator, device) -> torch.Generator:
    """``generator`` if it can draw on ``device``; else a new generator there, seeded
    deterministically from the old one's state (a net moved to a GPU keeps a
    reproducible stream, though not the CPU's numbers)."""
    want = generator_device(device)
    if generator.device == want:
        return generator
    return torch.Generator(want).manual_seed(_seed_of(generator.get_state()))


def restore(generator: torch.Generator, state: torch.Tensor) -> tuple[torch.Generator, bool]:
    """(a generator in ``state``, whether that was exact). A state saved on another kind
    of device (the CPU's Mersenne twister is 5056 bytes, CUDA's Philox 16) cannot be set:
    the generator is then seeded from it, deterministically, and the result is not the
    uninterrupted run's."""
    try:
        generator.set_state(state)
        return generator, True
    except (RuntimeError, ValueError):
        return generator.manual_seed(_seed_of(state)), False


def _seed_of(state: torch.Tensor) -> int:
    return int.from_bytes(hashlib.sha256(state.cpu().numpy().tobytes()).digest()[:8], "little") >> 1


def on(device, t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` on ``device`` (no copy when it is there already)."""
    return None if t is None else t.to(device)
