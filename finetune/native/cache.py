"""Rolling-buffer KV cache, as in Mistral's reference implementation.

With a sliding window ``W`` a query never looks further back than ``W - 1`` positions, so each layer
keeps exactly ``W`` slots and position ``p`` lives in slot ``p % W``. Keys are stored *after* RoPE,
so the physical order of the slots does not matter: every slot also records the absolute position
it holds, and the attention mask is built from absolute positions (:func:`sliding_window_mask`).

A step of any length (one decoded token, or a prefill chunk of any size, ``< W``, ``= W`` or ``> W``)
attends the cached tail *plus itself*: :meth:`RollingKVCache.update` returns the old slots
concatenated with the new keys before overwriting the slots with the newest ``min(T, W)`` positions.
Memory is bounded by ``W`` slots per layer plus the chunk being processed. Without a window the
cache simply grows (that is what full attention needs).
"""

from __future__ import annotations

import torch

from .model import NativeConfig


class RollingKVCache:
    """Per-layer keys / values ``[B, n_kv_heads, slots, head_dim]`` and the position of each slot.

    Use it through :class:`~finetune.native.model.Transformer`: ``model(chunk, cache)`` calls
    :meth:`update` once per layer and :meth:`advance` once at the end of the step.
    """

    def __init__(
        self,
        config: NativeConfig,
        batch_size: int = 1,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.window = config.sliding_window
        self.seen = 0  # tokens already processed (= absolute position of the next token)
        shape = (batch_size, config.n_kv_heads, self.window or 0, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        # Absolute position held by each slot, -1 for a slot never written (masked out).
        self.slot_pos = torch.full((self.window or 0,), -1, dtype=torch.long, device=device)

    @property
    def num_slots(self) -> int:
        """Slots per layer: ``W`` with a window, the number of tokens seen without one."""
        return self.keys[0].shape[2]

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store this step's keys / values for ``layer``; return what the step must attend.

        ``k``, ``v``: ``[B, n_kv_heads, T, head_dim]`` (keys already rotated), ``pos``: their
        absolute positions ``[T]``. Returns ``(keys, values, key_positions)`` covering the cached
        slots followed by the ``T`` new entries; the caller masks them by position.
        """
        if pos.numel() and int(pos[0]) != self.seen:
            raise ValueError(f"cache expected position {self.seen}, got {int(pos[0])}")
        old_k, old_v, old_pos = self.keys[layer], self.values[layer], self.slot_pos
        all_k, all_v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
        all_pos = torch.cat([old_pos, pos])
        if self.window is None:  # full attention: keep everything
            self.keys[layer], self.values[layer] = all_k, all_v
        else:  # write the newest min(T, W) positions into their slots p % W
            keep = min(k.shape[2], self.window)
            slots = pos[-keep:] % self.window
            old_k[:, :, slots], old_v[:, :, slots] = k[:, :, -keep:], v[:, :, -keep:]  # in place, after the cat
        return all_k, all_v, all_pos

    def advance(self, n: int) -> None:
        """Close a step of ``n`` tokens: record which positions the slots now hold."""
        new_pos = torch.arange(self.seen, self.seen + n, device=self.slot_pos.device)
        if self.window is None:
            self.slot_pos = torch.cat([self.slot_pos, new_pos])
        else:
            keep = new_pos[len(new_pos) - min(n, self.window) :]
            self.slot_pos[keep % self.window] = keep
        self.seen += n

    def positions(self) -> torch.Tensor:
        """Absolute position held by each slot (``-1`` = empty); slot ``s`` holds ``p`` with ``p % W == s``."""
        return self.slot_pos.clone()
