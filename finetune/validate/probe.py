"""What one validation run measures: the length cap, the window under test and memoised logits (:class:`Probe`)."""

from __future__ import annotations

import torch

from finetune.errors import FinetuneError
from finetune.native import Transformer

from .subject import KEEP, Subject

QUICK_LENGTH = 256  # --quick: no sequence longer than this
DEFAULT_MAX_LENGTH = 4096  # without --quick / --max-length (0 = no cap: 3W = 12288 for a real 7B v0.1)
_MEMO_ELEMENTS = 2**25  # logits kept for reuse up to this size (128 MB); longer ones are recomputed


def length_cap(quick: bool = False, max_length: int | None = None) -> int | None:
    """The cap on sequence lengths: ``max_length`` if given (0 = none), else 256 with ``quick``,
    else :data:`DEFAULT_MAX_LENGTH` (a 3W = 12288-token float32 forward with eager attention
    needs tens of GB; the window rows scale W down to fit and say so)."""
    if max_length is not None:
        return max_length or None
    return QUICK_LENGTH if quick else DEFAULT_MAX_LENGTH


class Probe:
    """One validation run of a subject: the window under test, the lengths, memoised logits.

    Every window check needs sequences longer than the window (``3 W`` for parity, ``2 W + 5`` for
    the mask probe and the cache). With a length ``cap`` (:func:`length_cap`) shorter than ``3 W``
    (a real 7B v0.1 has ``W = 4096``), the window under test is scaled down to ``cap // 3``,
    on the transformers model (its live config, restored afterwards) and on the native reference
    alike: the mask rule and the cache logic do not depend on ``W``, and the rows say so.
    """

    def __init__(self, subject: Subject, cap: int | None = None):
        if cap is not None and cap < 8:
            raise FinetuneError(f"--max-length {cap} is too short to measure anything; use at least 8.")
        self.subject = subject
        self.cap = cap
        declared = subject.window
        if declared is not None and cap is not None and 3 * declared > cap:
            self.window: int | None = max(2, cap // 3)
        else:
            self.window = declared
        self._hf: dict[tuple, torch.Tensor] = {}
        self._native: dict[tuple, torch.Tensor] = {}

    @property
    def scaled(self) -> bool:
        """Whether the window under test is smaller than the declared one (length cap)."""
        return self.window != self.subject.window

    @property
    def hf_window(self) -> int | None | str:
        """The window to force on the transformers model: KEEP unless scaled down."""
        return self.window if self.scaled else KEEP

    def fit(self, length: int) -> int:
        """``length`` under the cap."""
        return max(1, min(length, self.cap)) if self.cap else max(1, length)

    def window_note(self) -> str:
        """How the window was measured, for the rows' details."""
        if self.window is None:
            return "no window"
        if self.scaled:
            return f"W scaled {self.subject.window}->{self.window} to fit length cap {self.cap}"
        return f"W={self.window}"

    def parity_lengths(self) -> list[int]:
        """``< W, = W, 3 W`` with a window; 64 and 256 without; each under the cap."""
        wanted = [self.window - 1, self.window, 3 * self.window] if self.window else [64, 256]
        return sorted({self.fit(n) for n in wanted})

    def long_length(self) -> int:
        """A length past twice the window (mask probe, cache, training): ``2 W + 5``, or 64 without."""
        return self.fit(2 * self.window + 5 if self.window else 64)

    def ids(self, length: int, seed: int = 2) -> torch.Tensor:
        return self.subject.random_ids(length, seed=seed)

    def _memo(self, store: dict, key: tuple, compute) -> torch.Tensor:
        if key in store:
            return store[key]
        value = compute()
        if value.numel() <= _MEMO_ELEMENTS:
            store[key] = value
        return value

    def hf_logits(self, backend: str, length: int, seed: int = 2) -> torch.Tensor:
        """Transformers logits for ``ids(length, seed)`` under ``backend`` (memoised when small)."""
        return self._memo(self._hf, (backend, length, seed),
                          lambda: self.subject.logits(self.ids(length, seed), backend, self.hf_window))

    def native_model(self, window: int | None | str = KEEP, kv_head_map=None) -> Transformer:
        """The native reference at the window under test (or ``window``), optionally another KV map."""
        native = self.subject.native
        view = native.with_window(self.window if window == KEEP else window)
        if kv_head_map is not None:
            view.set_kv_head_map(kv_head_map)
        return view

    def native_logits(self, length: int, window: int | None | str = KEEP, seed: int = 2) -> torch.Tensor:
        """Native logits for ``ids(length, seed)`` at the window under test (or ``window``), memoised."""
        w = self.window if window == KEEP else window

        def compute() -> torch.Tensor:
            model = self.native_model(w)
            with torch.no_grad():
                return model(self.ids(length, seed).to(model.output.weight.device)).float().cpu()

        return self._memo(self._native, (length, w, seed, self.subject.native.kv_head_map), compute)
