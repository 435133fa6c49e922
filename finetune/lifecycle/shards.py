"""Streaming safetensors I/O for ``mistral-ft merge``: read a checkpoint one tensor at a time, write
the result one shard at a time.

A 7B model is 14 GB in bf16; folding an adapter into it must not need 28.  :class:`Checkpoint`
opens the base's safetensors files (``model.safetensors``, or the shards an
``model.safetensors.index.json`` lists) with ``safetensors.safe_open`` and reads a tensor only when
asked.  :func:`write_shards` plans the output shards from shapes and dtypes alone, with
huggingface_hub's ``split_torch_state_dict_into_shards`` on meta tensors (the planner
``save_pretrained`` uses, so the grouping and the ``model-00001-of-00003.safetensors`` names are the
ones transformers writes), then asks for the tensors of one shard, writes it and lets it go: at most
one shard of output tensors is alive at a time.  The index is written byte for byte as transformers
writes it (``{"metadata": {"total_parameters", "total_size"}, "weight_map"}``, sorted keys, indent 2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch

from finetune.errors import FinetuneError

DEFAULT_SHARD_SIZE = "5GB"  # the size Mistral's own Hub repositories and most serving stacks expect
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class Checkpoint:
    """The safetensors weights of a model folder, opened lazily: names, shapes and dtypes are read
    from the file headers; a tensor's bytes are read only by :meth:`get`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.file_of = _weight_map(folder)  # tensor name -> file name
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def names(self) -> list[str]:
        """Every tensor name, in natural order (layer 2 before layer 10), so shards hold whole layers."""
        return sorted(self.file_of, key=_natural_key)

    def spec(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of ``name`` without reading its data."""
        part = self._open(self.file_of[name]).get_slice(name)
        return tuple(part.get_shape()), _DTYPES[part.get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from disk now."""
        return self._open(self.file_of[name]).get_tensor(name)

    def _open(self, file: str):
        if file not in self._handles:
            from safetensors import SafetensorError, safe_open

            try:
                self._handles[file] = safe_open(str(self.folder / file), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise FinetuneError(
                    f"{self.folder / file} is not a readable safetensors file ({exc}).",
                    hint="The base checkpoint is damaged or incomplete: download it again.",
                ) from None
        return self._handles[file]


def _weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> safetensors file of a model folder; a readable error when there is none."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FinetuneError(f"{index} is not a valid safetensors index ({exc}).",
                                hint="Download the base checkpoint again.") from None
        missing = sorted({f for f in weight_map.values() if not (folder / f).is_file()})
        if missing:
            raise FinetuneError(f"{index} lists shards that are not in {folder}: {', '.join(missing)}.",
                                hint="The download is incomplete: fetch the base checkpoint again.")
        return dict(weight_map)
    if (folder / SINGLE_NAME).is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(folder / SINGLE_NAME), framework="pt") as f:
                return {name: SINGLE_NAME for name in f.keys()}
        except (SafetensorError, OSError) as exc:
            raise FinetuneError(f"{folder / SINGLE_NAME} is not a readable safetensors file ({exc}).",
                                hint="The base checkpoint is damaged or incomplete: download it again.") from None
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    raise FinetuneError(
        f"The base model folder {folder} has no {SINGLE_NAME} or {INDEX_NAME}"
        + (f" (weight files found: {', '.join(found)})" if found else " (no weight files at all)")
        + "; merge streams the base tensor by tensor from Hugging Face safetensors files.",
        hint="Convert the base once with transformers: AutoModelForCausalLM.from_pretrained(base)"
        ".save_pretrained(folder), and point the run's recipe.yaml model.base at that folder.",
    )


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def write_shards(
    out_dir: Path,
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
    produce: Callable[[str], torch.Tensor],
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
) -> list[str]:
    """Write the tensors named in ``specs`` (name -> shape, dtype) as safetensors shards in ``out_dir``.

    ``produce(name)`` is called once per tensor, shard by shard, and must return exactly the
    planned shape and dtype.  Returns the file names written (one ``model.safetensors``, or the
    shards plus the index).
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    planned = {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in specs.items()}
    split = split_torch_state_dict_into_shards(
        planned, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for file, names in split.filename_to_tensors.items():
        shard = {}
        for name in names:
            tensor = produce(name)
            if tuple(tensor.shape) != tuple(planned[name].shape) or tensor.dtype != planned[name].dtype:
                raise AssertionError(f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, planned "
                                     f"{tuple(planned[name].shape)} {planned[name].dtype}")
            shard[name] = tensor.contiguous()
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
        del shard  # the next shard starts from nothing
    if not split.is_sharded:
        return list(split.filename_to_tensors)
    total_parameters = sum(t.numel() for t in planned.values())
    index = {"metadata": {"total_parameters": total_parameters, **split.metadata},
             "weight_map": split.tensor_to_filename}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*split.filename_to_tensors, INDEX_NAME]
