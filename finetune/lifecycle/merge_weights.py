"""How each tensor of a merged model is computed from the base checkpoint and a run's peft adapter.

For a weight ``W`` of the base checkpoint (read in the recipe's compute dtype, as the live model
holds it):

* **quantized bases** (``model.quantization`` 4bit / 8bit): the adapter was trained against what
  bitsandbytes made of ``W``, not ``W`` itself, so ``W`` is first round-tripped exactly as
  transformers quantized it at training time: NF4 with the blocksize, double quantization and
  quant storage of the ``Params4bit`` transformers' own quantizer creates (read off a meta-device
  skeleton prepared by that quantizer, so the modules it skips, e.g. ``lm_head``, are skipped here
  too), or LLM.int8's row-wise absmax of the fp16 weight.  Every weight the live model holds
  quantized is round-tripped, adapted or not.
* **LoRA**: ``W' = W + s · B @ A`` in float32, ``s = lora_alpha / r`` (``/ sqrt(r)`` with rslora;
  ``r`` is the factor's rank, ``lora_alpha`` honours ``alpha_pattern``); embedding layers use
  peft's ``(B @ A)ᵀ``.
* **DoRA**: ``W' = m / ‖W + s·B@A‖_row · (W + s·B@A)``, peft's ``DoraLinearVariant.merge_safe``.
* **modules_to_save** (and ``base_layer`` copies peft saves for adapted embeddings): the adapter's
  trained tensor replaces the base's.
* **tied embeddings**: peft leaves a tied ``lm_head`` on the *original* embedding while
  ``embed_tokens`` trains (and vice versa), so when the adapter changes either one the merged model
  is untied: both tensors are written and ``tie_word_embeddings`` is set to false.

Adapter features with no faithful merge here (fan_in_fan_out, LoRA biases, trainable tokens,
target_parameters, DoRA on embeddings, ...) are refused with a :class:`FinetuneError`, never
silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune.errors import FinetuneError
from finetune.lifecycle.shards import Checkpoint
from finetune.model.load import compute_dtype, quantization_config
from finetune.recipe.schema import ModelConfig

_PREFIX = "base_model.model."
_FACTORS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_embedding_A": "A",
            ".lora_embedding_B": "B", ".lora_magnitude_vector": "m"}


@dataclass
class LoraFactors:
    """The adapter tensors of one adapted module and its scale."""

    A: str
    B: str
    scaling: float
    embedding: bool
    magnitude: str | None = None  # DoRA


@dataclass
class Adapter:
    """A saved peft LoRA adapter, opened lazily: its config and where each of its tensors goes."""

    folder: Path
    config: Any  # peft.LoraConfig
    file: Any  # safetensors handle
    lora: dict[str, LoraFactors] = field(default_factory=dict)  # base weight name -> factors
    replaced: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter tensor name

    def get(self, key: str) -> torch.Tensor:
        return self.file.get_tensor(key)


def read_adapter(folder: Path) -> Adapter:
    """Open ``folder``'s adapter_config.json + adapter_model.safetensors and sort its tensors."""
    from peft import PeftConfig
    from safetensors import SafetensorError, safe_open

    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError, AttributeError) as exc:
        raise FinetuneError(f"{folder}/adapter_config.json cannot be read: {str(exc).splitlines()[0]}",
                            hint="The run's adapter is damaged: re-run `mistral-ft train`.") from None
    _refuse_unsupported(config, folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise FinetuneError(f"The adapter in {folder} has no adapter_model.safetensors.",
                            hint="The run did not finish writing its adapter: re-run `mistral-ft train`.")
    try:
        file = safe_open(str(weights), framework="pt")
        keys = list(file.keys())
    except (SafetensorError, OSError) as exc:
        raise FinetuneError(f"{weights} is not a readable safetensors file ({exc}).",
                            hint="The adapter is damaged or truncated: re-run `mistral-ft train`.") from None
    adapter = Adapter(folder, config, file)
    _sort_tensors(adapter, keys)
    return adapter


def _refuse_unsupported(config, folder: Path) -> None:
    """Features of a peft adapter this merge cannot reproduce exactly."""
    unsupported = {
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)) != "LORA",
        "fan_in_fan_out": getattr(config, "fan_in_fan_out", False),
        "lora_bias": getattr(config, "lora_bias", False),
        "bias": getattr(config, "bias", "none") != "none",
        "target_parameters": bool(getattr(config, "target_parameters", None)),
        "trainable_token_indices": bool(getattr(config, "trainable_token_indices", None)),
        "layer_replication": bool(getattr(config, "layer_replication", None)),
        "use_qalora": getattr(config, "use_qalora", False),
        "alora_invocation_tokens": bool(getattr(config, "alora_invocation_tokens", None)),
    }
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise FinetuneError(
            f"The adapter in {folder} uses {', '.join(found)} (adapter_config.json), which mistral-ft merge "
            "cannot fold into the base weights exactly.",
            hint="Serve it unmerged with peft (PeftModel.from_pretrained), or retrain with a plain LoRA / "
            "DoRA recipe.",
        )


def _sort_tensors(adapter: Adapter, keys: list[str]) -> None:
    """Group LoRA factors by the base weight they change; everything else replaces a base tensor."""
    from peft.utils.other import get_pattern_key

    parts: dict[str, dict[str, str]] = {}
    for key in keys:
        name = key.removeprefix(_PREFIX)
        suffix = next((s for s in _FACTORS if name.endswith(s)), None)
        if suffix is not None:
            parts.setdefault(name[: -len(suffix)], {})[_FACTORS[suffix]] = key
        elif name.endswith(".base_layer.weight"):  # the base copy peft saves with adapted embeddings
            adapter.replaced[name.removesuffix(".base_layer.weight") + ".weight"] = key
        else:  # modules_to_save: a trained copy of a whole module
            adapter.replaced[name] = key
    config = adapter.config
    for module, found in parts.items():
        if "A" not in found or "B" not in found or ("m" in found) != bool(config.use_dora):
            raise FinetuneError(f"{adapter.folder}/adapter_model.safetensors has an incomplete adapter for "
                                f"{module} (found {sorted(found)}).",
                                hint="The adapter is damaged: re-run `mistral-ft train`.")
        embedding = found["A"].endswith("lora_embedding_A")
        if embedding and "m" in found:
            raise FinetuneError(f"The adapter in {adapter.folder} uses DoRA on the embedding {module}; "
                                "mistral-ft merge folds DoRA into linear layers only.",
                                hint="Serve it unmerged with peft, or leave embeddings out of target_modules.")
        rank = adapter.file.get_slice(found["A"]).get_shape()[0]
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
        scaling = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        adapter.lora[module + ".weight"] = LoraFactors(found["A"], found["B"], scaling, embedding, found.get("m"))


def apply_lora(weight: torch.Tensor, factors: LoraFactors, adapter: Adapter) -> torch.Tensor:
    """``weight`` (float32) with the adapter folded in, as peft's merge computes it."""
    a, b = adapter.get(factors.A).float(), adapter.get(factors.B).float()
    delta = (b @ a).T if factors.embedding else b @ a
    merged = weight + factors.scaling * delta
    if factors.magnitude is None:
        return merged
    magnitude = adapter.get(factors.magnitude).float()
    return (magnitude / torch.linalg.norm(merged, dim=1)).view(-1, 1) * merged


class LiveLayout:
    """What the live (training-time) model made of each base tensor: which ones bitsandbytes held
    quantized and with which parameters, and which weights are tied."""

    def __init__(self, base_dir: Path, cfg: ModelConfig):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.config = AutoConfig.from_pretrained(base_dir, trust_remote_code=cfg.trust_remote_code)
        if getattr(self.config, "quantization_config", None):
            raise FinetuneError(
                f"The base model {cfg.base} is stored pre-quantized (its config.json has a quantization_config); "
                "merge needs the full-precision checkpoint to fold the adapter into.",
                hint="Point model.base in the run's recipe.yaml at the original (unquantized) checkpoint.",
            )
        self.compute_dtype = compute_dtype(cfg)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, trust_remote_code=cfg.trust_remote_code)
        self.tied = dict(self.model.all_tied_weights_keys) if self.config.tie_word_embeddings else {}
        self.quantizer = None
        qconfig = quantization_config(cfg)
        if qconfig is not None:
            from transformers.quantizers import AutoHfQuantizer

            self.quantizer = AutoHfQuantizer.from_config(qconfig)
            self.quantizer.preprocess_model(self.model, device_map={"": "cpu"})
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where training quantized

    def quantized_param(self, name: str):
        """The meta ``Params4bit`` / ``Int8Params`` transformers made for ``name``, or None."""
        if self.quantizer is None:
            return None
        try:
            if not self.quantizer.param_needs_quantization(self.model, name):
                return None
        except AttributeError:  # a checkpoint name with no module in the model (e.g. renamed at load)
            return None
        return self.model.get_parameter(name)

    def round_trip(self, weight: torch.Tensor, param) -> torch.Tensor:
        """``weight`` quantized and dequantized as bitsandbytes did when the live model loaded it."""
        import bitsandbytes.functional as bnb_f

        w = weight.to(self.device, self.compute_dtype).contiguous()
        if type(param).__name__ == "Params4bit":
            return nf4_round_trip(w, param).cpu()
        codes, scales, _ = bnb_f.int8_vectorwise_quant(w.to(torch.float16))  # Int8Params: absmax of fp16 rows
        return bnb_f.int8_vectorwise_dequant(codes, scales).cpu()


_CHUNK = 1 << 18  # elements quantized at a time


def nf4_round_trip(w: torch.Tensor, param) -> torch.Tensor:
    """``dequantize_4bit(quantize_4bit(w))`` with ``param``'s settings, a block of rows at a time.

    The result is the whole-tensor call's, bit for bit: a 4-bit code and its block's absmax depend on
    that block alone, and the double-quantized absmax is computed over all blocks exactly as
    ``quantize_4bit`` does.  Chunking matters on a CPU, where bitsandbytes' quantize kernel
    allocates 16 floats per element: 7 GB at once for one of Mistral 7B's MLP matrices.
    """
    import bitsandbytes.functional as bnb_f

    rows = max(1, _CHUNK // w.shape[-1]) if w.dim() == 2 and w.shape[-1] % param.blocksize == 0 else len(w)
    parts = [bnb_f.quantize_4bit(w[i : i + rows], blocksize=param.blocksize, quant_type=param.quant_type)
             for i in range(0, len(w), rows)]
    absmax = torch.cat([state.absmax for _, state in parts])
    if param.compress_statistics:  # quantize_4bit's double quantization, then dequantize_4bit's inverse
        offset = absmax.mean()
        nested, nested_state = bnb_f.quantize_blockwise(absmax - offset, blocksize=256)
        absmax = bnb_f.dequantize_blockwise(nested, nested_state) + offset
    out, start = [], 0
    for packed, state in parts:
        blocks = state.absmax.numel()
        state.absmax, start = absmax[start : start + blocks].float(), start + blocks
        out.append(bnb_f.dequantize_4bit(packed, state))
    return torch.cat(out)


@dataclass
class MergePlan:
    """Every output tensor: its shape/dtype, and how to compute it (see the module docstring)."""

    base: Checkpoint
    adapter: Adapter
    live: LiveLayout
    dtype: torch.dtype
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # output name -> base checkpoint name
    untied: list[str] = field(default_factory=list)

    def produce(self, name: str) -> torch.Tensor:
        """The merged tensor ``name`` in the output dtype."""
        replaced = self.adapter.replaced.get(name)
        if replaced is not None:
            weight = self.adapter.get(replaced)
        else:
            weight = self.base.get(self.source[name]).to(self.live.compute_dtype)
            param = self.live.quantized_param(name)
            if param is not None:
                weight = self.live.round_trip(weight, param)
        factors = self.adapter.lora.get(name)
        if factors is not None:
            weight = apply_lora(weight.float(), factors, self.adapter)
        return weight.to(self.dtype) if weight.is_floating_point() else weight

    @property
    def counts(self) -> dict[str, Any]:
        quantized = sum(self.live.quantized_param(n) is not None for n in self.specs if n not in self.adapter.replaced)
        return {"tensors": len(self.specs), "lora_merged": len(self.adapter.lora), "round_tripped": quantized,
                "replaced": sorted(self.adapter.replaced), "untied": self.untied}


def plan_merge(base: Checkpoint, adapter: Adapter, live: LiveLayout, dtype: torch.dtype) -> MergePlan:
    """Check that every adapter tensor lands on a base tensor of the right shape, and list the outputs."""
    plan = MergePlan(base, adapter, live, dtype)
    names = base.names()
    touched = set(adapter.lora) | set(adapter.replaced)
    for target, source in live.tied.items():  # the live model's tied head *is* the original embedding
        if source in base and touched & {target, source}:
            if getattr(adapter.config, "ensure_weight_tying", False):
                raise FinetuneError(f"The adapter in {adapter.folder} uses ensure_weight_tying on tied embeddings; "
                                    "mistral-ft merge does not support it.", hint="Serve it unmerged with peft.")
            names += [] if target in base else [target]
            plan.untied.append(target)
    for name in names:
        source = live.tied[name] if name in plan.untied else name
        shape, stored = base.spec(source)
        plan.source[name] = source
        plan.specs[name] = (shape, dtype if stored.is_floating_point else stored)
    for name, key in adapter.replaced.items():
        _check_shape(plan, name, tuple(adapter.file.get_slice(key).get_shape()), adapter)
    for name, factors in adapter.lora.items():
        rows = adapter.file.get_slice(factors.B).get_shape()[0]
        cols = adapter.file.get_slice(factors.A).get_shape()[1]
        _check_shape(plan, name, (cols, rows) if factors.embedding else (rows, cols), adapter)
    return plan


def _check_shape(plan: MergePlan, name: str, shape: tuple[int, ...], adapter: Adapter) -> None:
    if name not in plan.specs:
        raise FinetuneError(
            f"The adapter in {adapter.folder} changes {name}, which the base checkpoint {plan.base.folder} "
            "does not have.",
            hint="Check that recipe.yaml's model.base is the model the run was trained from.",
        )
    if tuple(plan.specs[name][0]) != shape:
        raise FinetuneError(
            f"The adapter in {adapter.folder} has shape {list(shape)} for {name}, but the base checkpoint has "
            f"{list(plan.specs[name][0])}.",
            hint="Check that recipe.yaml's model.base is the model the run was trained from.",
        )
