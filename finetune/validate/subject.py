"""The model under validation: a :class:`Subject` wraps it for the checks.

The subject holds the transformers model under test (float32, CPU, eval mode), its tokenizer, the
architecture its checkpoint *declares* (:class:`~finetune.native.NativeConfig`, read once at load
time: the sliding window every check expects comes from here, never from the live model, whose
config a broken attention path may have lost) and the native reference model sharing its weights.
:meth:`Subject.driving` runs the transformers model with a given attention backend (and, when the
window must be scaled down to fit a length cap, a given window) and restores it afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from finetune.errors import FinetuneError
from finetune.native import NativeConfig, Transformer, UnsupportedRoPE, from_transformers

KEEP = "keep"  # driving(window=KEEP): leave the live config's window alone
_HALF = (torch.bfloat16, torch.float16)


@dataclass
class Subject:
    """A loaded model under test; build one with :func:`resolve_target` or :meth:`from_live`."""

    name: str
    kind: str  # "model folder" | "hub" | "run" | "recipe" | "live"
    model: Any
    tokenizer: Any
    hf_config: dict[str, Any]  # the transformers config as loaded (a snapshot: later edits do not show)
    declared: NativeConfig | None  # None when the config is invalid (see the config rows)
    native: Transformer | None
    template_choice: str = "mistral"
    training_dtype: torch.dtype | None = None
    notes: list[str] = field(default_factory=list)
    _copies: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_live(
        cls,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "model",
        kind: str = "live",
        template_choice: str = "mistral",
        training_dtype: torch.dtype | None = None,
        notes: list[str] | None = None,
    ) -> Subject:
        """Wrap an already loaded transformers model and its tokenizer.

        The native reference shares the model's weights (no copy). A quantized or adapter-wrapped
        model has no plain weights to share: it gets no native reference, and the checks that need
        one report themselves as skipped.
        """
        hf_config = model.config.to_dict()
        model_type = hf_config.get("model_type")
        if model_type not in ("mistral", "mixtral"):
            raise FinetuneError(
                f"{name} is a {model_type!r} model; mistral-ft validate checks Mistral and Mixtral checkpoints "
                "(model_type mistral or mixtral)."
            )
        notes = list(notes or [])
        native = declared = None
        try:
            declared = NativeConfig.from_hf_config(model.config)
        except UnsupportedRoPE as exc:
            raise FinetuneError(f"{name} cannot be validated: {exc}.") from None
        except ValueError as exc:  # an invalid number: the config rows report it, nothing else can run
            notes.append(f"invalid config ({exc}): only the config and template checks ran")
        if declared is not None:
            if _quantized(model):
                notes.append("quantized weights: no native reference (validate the unquantized base folder)")
            elif any(".lora_" in key for key, _ in model.named_parameters()):
                notes.append("adapter-wrapped model: no native reference (merge it, or validate the run folder)")
            else:
                native = from_transformers(model)
        return cls(name, kind, model, tokenizer, hf_config, declared, native, template_choice, training_dtype, notes)

    # ------------------------------------------------------------------ facts

    @property
    def window(self) -> int | None:
        """The sliding window the checkpoint declares (None = full causal attention)."""
        return self.declared.sliding_window if self.declared else self.hf_config.get("sliding_window")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What was validated, for the report header and ``--json``."""
        c = self.hf_config
        rope = c.get("rope_parameters") or {}
        return {
            "name": self.name,
            "kind": self.kind,
            "architecture": c.get("model_type"),
            "layers": c.get("num_hidden_layers"),
            "hidden_size": c.get("hidden_size"),
            "heads": c.get("num_attention_heads"),
            "kv_heads": c.get("num_key_value_heads"),
            "experts": c.get("num_local_experts", 0),
            "vocab_size": c.get("vocab_size"),
            "sliding_window": c.get("sliding_window"),
            "rope_theta": rope.get("rope_theta", c.get("rope_theta")),
            "notes": self.notes,
        }

    def random_ids(self, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """Deterministic random token ids ``[batch, length]``, avoiding the special ids 0-2."""
        high = min(self.hf_config["vocab_size"], len(self.tokenizer))
        g = torch.Generator().manual_seed(seed)
        return torch.randint(3, high, (batch, length), generator=g)

    # ------------------------------------------------------------------ driving the model

    def backend_model(self, backend: str) -> Any:
        """The transformers model that runs ``backend``: the subject's own (float32, CPU) for eager /
        sdpa; a bfloat16 CUDA copy for flash_attention_2, which has no float32 / CPU kernel."""
        if backend != "flash_attention_2" or self.model.dtype in _HALF:
            return self.model
        if backend not in self._copies:
            self._copies[backend] = self.copy_as(torch.bfloat16, "cuda", backend)
        return self._copies[backend]

    def copy_as(self, dtype: torch.dtype, device: str | torch.device, attn: str | None = None) -> Any:
        """A copy of the model in another dtype / device (allocated there once, weights cast on copy)."""
        import copy

        from transformers import AutoModelForCausalLM

        config = copy.deepcopy(self.model.config)
        with torch.device(device):
            clone = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn or self.model.config._attn_implementation
            )
        clone.load_state_dict(self.model.state_dict())
        return clone.eval()

    @contextlib.contextmanager
    def driving(self, backend: str, window: int | None | str = KEEP) -> Iterator[Any]:
        """Run the model in eval mode with attention ``backend`` (and ``window`` unless KEEP); restore
        the mode, the backend and the window afterwards."""
        model = self.backend_model(backend)
        config = model.config
        old_impl, old_window = config._attn_implementation, getattr(config, "sliding_window", None)
        was_training = model.training
        if backend != old_impl:
            model.set_attn_implementation(backend)
        if window != KEEP:
            config.sliding_window = window
        model.eval()
        try:
            yield model
        finally:
            model.train(was_training)
            config.sliding_window = old_window
            if model.config._attn_implementation != old_impl:
                model.set_attn_implementation(old_impl)

    def logits(self, ids: torch.Tensor, backend: str, window: int | None | str = KEEP) -> torch.Tensor:
        """Float32 CPU logits ``[B, T, vocab]`` of the transformers model under ``backend``."""
        with self.driving(backend, window) as model, torch.no_grad():
            out = model(input_ids=ids.to(model.device), use_cache=False).logits
        return out.float().cpu()

    def mask_probe(self, positions: list[int], length: int, backend: str,
                   window: int | None | str = KEEP, seed: int = 1) -> torch.Tensor:
        """Which keys each query of layer 0 attends, read off the model: ``seen[p, i]``.

        The batch holds the same random sequence ``len(positions) + 1`` times. In layer 0 the query
        projection is zeroed (so attention is uniform over whatever the mask allows, whatever the
        weights) and, in row ``p + 1``, the value vector at key ``positions[p]`` is set to a large
        constant. Query ``i``'s attention output then moves exactly when its mask admits that key;
        outputs the mask excludes stay bit-for-bit equal. Only layer 0 runs; the weights are not
        touched (forward hooks only).
        """
        ids = self.random_ids(length, seed=seed).repeat(len(positions) + 1, 1)
        captured: dict[str, torch.Tensor] = {}
        with self.driving(backend, window) as model:
            attn = _decoder_layers(model)[0].self_attn
            rows = torch.arange(1, len(positions) + 1)
            keys = torch.tensor(positions)

            def zero_queries(module, args, output):
                return torch.zeros_like(output)

            def mark_values(module, args, output):
                output = output.clone()
                output[rows.to(output.device), keys.to(output.device)] = 1e3
                return output

            def stop(module, args, output):
                captured["out"] = output[0] if isinstance(output, tuple) else output
                raise _StopForward

            handles = [attn.q_proj.register_forward_hook(zero_queries),
                       attn.v_proj.register_forward_hook(mark_values),
                       attn.register_forward_hook(stop)]
            try:
                with torch.no_grad():
                    model(input_ids=ids.to(model.device), use_cache=False)
            except _StopForward:
                pass
            finally:
                for handle in handles:
                    handle.remove()
            half = model.dtype in _HALF
        out = captured["out"].float().cpu()
        diff = (out[1:] - out[:1]).abs().amax(-1)  # [P, L]
        return diff > float(diff.max()) * (1e-5 if half else 1e-7)


def _decoder_layers(model: Any):
    """The decoder layers of a ``*ForCausalLM`` (also through a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


class _StopForward(Exception):
    """Raised by a forward hook to stop the model after the layer it watches."""


def _quantized(model: Any) -> bool:
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "is_quantized", False)
        or getattr(getattr(model, "config", None), "quantization_config", None)
    )
