"""Array steps of the synthetic world (``datasets.synthetic``): the hashed pair term, top-k rows, blocks of users."""

from __future__ import annotations

from typing import Callable

import numpy as np

USER_BLOCK = 256  # users per block when a block of users x the whole catalogue is materialised ...
BLOCK_ELEMENTS = 1 << 24  # ... fewer where the catalogue is so large that a block would pass this many pairs


def user_block(num_items: int) -> int:
    """Users per block for a catalogue of ``num_items``: ``USER_BLOCK`` up to 65,536 items (so every smaller
    world draws exactly as before), then fewer, so that a block's [b, I] float64 arrays stay near 128 MB.

    Example:
        >>> user_block(2000), user_block(1_000_000)
        (256, 16)
    """
    return min(USER_BLOCK, max(1, BLOCK_ELEMENTS // num_items))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, through tanh (no overflow warning for large |x|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def pair_noise(key: np.uint64, users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Standard normal z(u, i) fixed per (key, u, i); users and items broadcast against each other."""
    x = users.astype(np.uint64) * np.uint64(num_items) + items.astype(np.uint64) + key
    x = x + np.uint64(0x9E3779B97F4A7C15)  # splitmix64: a bijection of the pair index
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    u1 = ((x >> np.uint64(32)).astype(np.float64) + 1.0) / 2.0**32  # (0, 1]
    u2 = (x & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32  # [0, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores of each row, largest first: [B, N] -> [B, k] int64."""
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int64)


def in_blocks(users: np.ndarray, width: int, rows_of: Callable[[np.ndarray], np.ndarray], num_items: int) -> np.ndarray:
    """``rows_of(block)`` -> [b, width] for consecutive blocks of ``user_block(num_items)`` users, stacked: [B, width]
    int64. Bounds the [b, I] arrays a block materialises; blocks are visited in order (a shared RNG draws as in one
    loop)."""
    out = np.empty((len(users), width), dtype=np.int64)
    step = user_block(num_items)
    for lo in range(0, len(users), step):
        block = users[lo : lo + step]
        out[lo : lo + len(block)] = rows_of(block)
    return out
