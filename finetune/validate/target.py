"""What ``mistral-ft validate TARGET`` checks: resolve TARGET into a :class:`Subject`.

TARGET is one of

* a model folder (``config.json`` + safetensors + tokenizer), or a Hugging Face Hub id: loaded by the
  same code as ``mistral-ft train`` (:mod:`finetune.model.load`), so an unreachable / offline id is the
  same readable :class:`FinetuneError`;
* a run folder ``runs/<x>/`` (``recipe.yaml`` + ``adapter/``): the recipe's ``model.base`` is loaded in
  float32 without quantization, the PEFT adapter is applied and merged (``merge_and_unload``), so
  what is validated is exactly the fine-tuned model; the run's own ``tokenizer/`` is used when present;
* a recipe YAML: its ``model.base`` in float32, with the recipe's template choice and training dtype.

The subject holds the transformers model under test (float32, CPU, eval mode), its tokenizer, the
architecture its checkpoint *declares* (:class:`~finetune.native.NativeConfig`, read once at load
time: the sliding window every check expects comes from here, never from the live model, whose
config a broken attention path may have lost) and the native reference model sharing its weights.
:meth:`Subject.driving` runs the transformers model with a given attention backend (and, when the
window must be scaled down to fit a length cap, a given window) and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from finetune.errors import FinetuneError
from finetune.native import NativeConfig, Transformer, from_transformers

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
        except NotImplementedError as exc:
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


# ---------------------------------------------------------------------- resolving TARGET


def resolve_target(target: Any) -> Subject:
    """Load TARGET (see the module docstring); a Subject is returned as is. Bad targets raise
    :class:`FinetuneError` before any weights are read where that can be known."""
    from finetune.recipe.schema import Recipe

    if isinstance(target, Subject):
        return target
    if isinstance(target, Recipe):
        return _from_recipe(target, "recipe")
    text = str(target)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "recipe.yaml").is_file() and (path / "adapter").is_dir():
            return _from_run(path)
        if (path / "config.json").is_file():
            return _from_model(str(path), "model folder")
        if (path / "adapter_config.json").is_file():
            raise FinetuneError(
                f"{path} holds a PEFT adapter, not a model.",
                hint="Validate the run folder that contains it (recipe.yaml + adapter/), so the adapter is "
                "merged into the base the recipe names.",
            )
        raise FinetuneError(
            f"{path} is neither a model folder (config.json + safetensors) nor a run folder (recipe.yaml + "
            "adapter/).",
            hint="Pass a model folder, a Hub id such as mistralai/Mistral-7B-v0.1, a run folder or a recipe YAML.",
        )
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            from finetune.recipe.load import load_recipe

            return _from_recipe(load_recipe(path), str(path))
        raise FinetuneError(
            f"{path} is a file; validate takes a model folder, a Hub id, a run folder or a recipe YAML."
        )
    parent = path.parent
    if str(parent) not in ("", ".") and parent.is_dir():  # e.g. runs/typo: a local path, not a Hub id
        raise FinetuneError(
            f"No such folder: {path} (its parent {parent} exists, so this is not a Hub id).",
            hint="Check the name; `ls` the parent folder to see what is there.",
        )
    return _from_model(text, "hub")


def _fp32_model_config(base: str, revision: str | None = None, tokenizer: str | None = None,
                       trust_remote_code: bool = False):
    """The ``model:`` section that loads ``base`` for validation: float32, no quantization, sdpa."""
    from finetune.recipe.schema import ModelConfig

    return ModelConfig(base=base, revision=revision, tokenizer=tokenizer, quantization="none",
                       compute_dtype="fp32", attn_implementation="sdpa", trust_remote_code=trust_remote_code)


def _check_model_type(folder: Path) -> None:
    """Refuse a local non-Mistral checkpoint before reading its weights."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise FinetuneError(f"{folder}/config.json cannot be read: {exc}.") from None
    if model_type not in ("mistral", "mixtral"):
        raise FinetuneError(
            f"{folder} is a {model_type!r} model; mistral-ft validate checks Mistral and Mixtral checkpoints "
            "(model_type mistral or mixtral)."
        )


def _load(cfg) -> tuple[Any, Any]:
    from finetune.model.load import load_base_model, load_tokenizer

    if Path(cfg.base).expanduser().is_dir():
        _check_model_type(Path(cfg.base).expanduser())
    tokenizer = load_tokenizer(cfg)
    return load_base_model(cfg), tokenizer


def _from_model(base: str, kind: str) -> Subject:
    model, tokenizer = _load(_fp32_model_config(base))
    return Subject.from_live(model, tokenizer, name=base, kind=kind, training_dtype=_default_training_dtype())


def _from_recipe(recipe, name: str) -> Subject:
    from finetune.model.load import compute_dtype

    m = recipe.model
    model, tokenizer = _load(_fp32_model_config(m.base, m.revision, m.tokenizer, m.trust_remote_code))
    return Subject.from_live(
        model, tokenizer, name=name, kind="recipe", template_choice=recipe.data.template,
        training_dtype=compute_dtype(m), notes=[f"base {m.base} loaded in fp32 without quantization"],
    )


def _from_run(run: Path) -> Subject:
    from transformers import AutoTokenizer

    from finetune.model.load import compute_dtype
    from finetune.recipe.load import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    m = recipe.model
    model, tokenizer = _load(_fp32_model_config(m.base, m.revision, m.tokenizer, m.trust_remote_code))
    if (run / "tokenizer").is_dir():
        tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    merged = _merge_adapter(model, run / "adapter")
    return Subject.from_live(
        merged, tokenizer, name=str(run), kind="run", template_choice=recipe.data.template,
        training_dtype=compute_dtype(m),
        notes=[f"adapter {run / 'adapter'} merged into {m.base} (fp32, unquantized)"],
    )


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """Apply the PEFT adapter in ``adapter`` and fold it into the weights."""
    from peft import PeftModel

    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise FinetuneError(
            f"The adapter in {adapter} does not load onto the recipe's base model: {str(exc).splitlines()[0]}",
            hint="Check that recipe.yaml's model.base is the model the run was trained from.",
        ) from None
    return wrapped.merge_and_unload()


def _default_training_dtype() -> torch.dtype:
    """What ``compute_dtype: auto`` trains in: bf16 on CUDA, fp32 on CPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


# ---------------------------------------------------------------------- what a run measures

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
