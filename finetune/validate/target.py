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
    declared: NativeConfig
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
        try:
            declared = NativeConfig.from_hf_config(model.config)
        except (ValueError, NotImplementedError) as exc:
            raise FinetuneError(
                f"{name} cannot be validated: {exc}.",
                hint="mistral-ft validate checks Mistral and Mixtral checkpoints (model_type mistral or "
                "mixtral) with the default RoPE.",
            ) from None
        notes = list(notes or [])
        native = None
        if _quantized(model):
            notes.append("quantized weights: no native reference (validate the unquantized base folder)")
        elif hasattr(model, "peft_config"):
            notes.append("adapter-wrapped model: no native reference (merge it, or validate the run folder)")
        else:
            native = from_transformers(model)
        model.eval()
        return cls(name, kind, model, tokenizer, declared, native, template_choice, training_dtype, notes)

    # ------------------------------------------------------------------ facts

    @property
    def window(self) -> int | None:
        """The sliding window the checkpoint declares (None = full causal attention)."""
        return self.declared.sliding_window

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """What was validated, for the report header and ``--json``."""
        c = self.declared
        return {
            "name": self.name,
            "kind": self.kind,
            "architecture": "mixtral" if c.n_experts else "mistral",
            "layers": c.n_layers,
            "hidden_size": c.dim,
            "heads": c.n_heads,
            "kv_heads": c.n_kv_heads,
            "experts": c.n_experts,
            "vocab_size": c.vocab_size,
            "sliding_window": c.sliding_window,
            "rope_theta": c.rope_theta,
            "notes": self.notes,
        }

    def random_ids(self, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
        """Deterministic random token ids ``[batch, length]``, avoiding the special ids 0-2."""
        high = min(self.declared.vocab_size, len(self.tokenizer))
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
        """Run the model with attention ``backend`` (and ``window`` unless KEEP); restore both after."""
        model = self.backend_model(backend)
        config = model.config
        old_impl, old_window = config._attn_implementation, getattr(config, "sliding_window", None)
        if backend != old_impl:
            model.set_attn_implementation(backend)
        if window != KEEP:
            config.sliding_window = window
        try:
            yield model
        finally:
            config.sliding_window = old_window
            if model.config._attn_implementation != old_impl:
                model.set_attn_implementation(old_impl)

    def logits(self, ids: torch.Tensor, backend: str, window: int | None | str = KEEP) -> torch.Tensor:
        """Float32 CPU logits ``[B, T, vocab]`` of the transformers model under ``backend``."""
        with self.driving(backend, window) as model, torch.no_grad():
            out = model(input_ids=ids.to(model.device), use_cache=False).logits
        return out.float().cpu()

    def first_layer_output(self, ids: torch.Tensor, backend: str, window: int | None | str = KEEP) -> torch.Tensor:
        """Hidden states after the first decoder layer ``[B, T, dim]`` (the rest of the model never runs).

        One layer is enough to read the attention mask off the model: position ``i`` of this output
        depends on input token ``j`` exactly when query ``i`` attends key ``j`` (or ``i == j``).
        """
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output
            raise _StopForward

        with self.driving(backend, window) as model:
            handle = model.model.layers[0].register_forward_hook(hook)
            try:
                with torch.no_grad():
                    model(input_ids=ids.to(model.device), use_cache=False)
            except _StopForward:
                pass
            finally:
                handle.remove()
        return captured["h"].float().cpu()


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
