"""``mistral-ft merge``: the merged folder is a plain transformers model that reproduces the live
adapter model (QLoRA, LoRA, DoRA, rslora, 8-bit, tied embeddings), shards like transformers,
streams in bounded memory, and refuses bad input in one paragraph."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors import safe_open

from finetune.errors import FinetuneError
from finetune.lifecycle.merge import (
    TOLERANCES, check_prompts, compare, folder_logits, live_logits, merge, merge_run, tolerance,
)
from finetune.lifecycle.target import read_run
from tests.conftest import REPO, run_cli

HUB_ID = "mistral-ft-tests/tiny-mistral"  # served offline from a hand-made Hugging Face cache


def synthetic_run(run: Path, base: Path, quantization: str = "none", seed: int = 0, **lora) -> Path:
    """A run folder (the quickstart recipe on ``base``) whose adapter is a real peft adapter with
    random, non-zero factors instead of trained ones: every merge path, without a training run."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.recipe.load import load_recipe
    from finetune.train.run_dir import write_recipe

    overrides = [f"model.base={base}", f"model.quantization={quantization}", "model.compute_dtype=fp32"]
    run.mkdir(parents=True)
    write_recipe(run, load_recipe(REPO / "recipes/quickstart.yaml", overrides))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora))
    for name, param in model.named_parameters():
        if "lora_magnitude_vector" in name:  # DoRA starts at ||W + dW||: move it so the magnitude matters
            param.data *= 1 + 0.5 * torch.rand_like(param)
        if "modules_to_save" in name:  # a copy of the base module: "train" it
            param.data += 0.02 * torch.randn_like(param)
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(run / "tokenizer")
    return run


def merge_and_compare(run: Path, out: Path, **kwargs) -> tuple[dict, dict]:
    """Merge ``run`` into ``out`` in process and compare with its live adapter model."""
    folder = read_run(run)
    _, report = merge_run(run, out, **kwargs)
    prompts, _ = check_prompts(folder)
    logits = folder_logits(out, folder.recipe.model, prompts)
    return report, compare(live_logits(folder, prompts), logits, tolerance(folder.recipe.model)[0])


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.fixture(scope="module")
def merged_quickstart(quickstart_run, tiny_mistral, tmp_path_factory):
    """``mistral-ft merge RUN`` with every default, on a copy of the trained quickstart run whose
    recipe names its base by Hub id, served offline from a Hugging Face cache laid out as
    huggingface_hub lays it out (refs/main -> snapshots/<commit>/)."""
    root = tmp_path_factory.mktemp("merge")
    repo = root / "hub-cache" / f"models--{HUB_ID.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_mistral, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    run = root / "run"
    shutil.copytree(quickstart_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "merged"))
    _retarget(run, HUB_ID)
    result = run_cli("merge", str(run), env={"HF_HUB_CACHE": str(root / "hub-cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stderr


@pytest.fixture(scope="module")
def merged_fp32(quickstart_run, tmp_path_factory):
    """The quickstart merged in fp32 (in process, no check): (folder, report)."""
    out = tmp_path_factory.mktemp("merge-fp32") / "merged"
    return merge_run(quickstart_run[0], out, dtype="fp32")


def test_quickstart_merge_writes_a_plain_bf16_model_that_matches_the_live_adapter(merged_quickstart, tiny_mistral):
    run, stderr = merged_quickstart
    merged = run / "merged"  # the default output
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer.model",
                 "merge_report.json"):
        assert (merged / name).is_file(), name
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    weights = tensors(merged / "model.safetensors")
    assert set(weights) == set(tensors(tiny_mistral / "model.safetensors"))  # standard names, nothing else
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    trained = tensors(run / "adapter/adapter_model.safetensors")  # modules_to_save: the trained copies
    assert torch.equal(weights["lm_head.weight"], trained["base_model.model.lm_head.weight"].bfloat16())

    report = json.loads((merged / "merge_report.json").read_text())
    assert report["base"] == HUB_ID  # resolved through the cache, offline
    assert report["base_weights"] == "NF4 round trip" and report["round_tripped"] == 14
    assert report["lora_merged"] == 14 and report["replaced"] == ["lm_head.weight", "model.embed_tokens.weight"]
    check = report["check"]
    assert check["passed"] and check["prompts"] == 8 and check["prompts_from"] == "data.validation_sources"
    assert check["tolerance"] == TOLERANCES["fp32"]
    # passed: the mean |Δ| is within the documented tolerance; and no single logit strays either
    assert check["max_abs_diff"] < 0.02 * check["mean_abs_logit"]  # measured 0.026 of 8.2 (0.3 %)
    assert check["top1_agreement"] == 1.0
    assert "top-1 agreement 100.0%" in " ".join(stderr.split()) and "Traceback" not in stderr


def test_merged_folder_in_a_fresh_process_matches_the_live_model_and_its_exact_match(
    merged_quickstart, quickstart_run, tmp_path
):
    """Plain transformers, no mistral-ft code: logits on held-out prompts (compared here with the live
    4-bit + peft model) and greedy exact match on every held-out row, against summary.json."""
    run, _ = merged_quickstart
    script = textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(run / "merged")!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(run / "merged")!r})
        rows = [json.loads(l) for l in open("data/quickstart/eval.jsonl")]
        prompts = ["[INST] " + r["prompt"].split("### Instruction\\n")[1].split("\\n\\n### Response")[0] + " [/INST]"
                   for r in rows]
        ids = [tok(p).input_ids for p in prompts]
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([i])).logits[0].float() for i in ids[:8]]
        torch.save({{"ids": ids[:8], "logits": torch.cat(logits)}}, {str(tmp_path / "logits.pt")!r})
        tok.padding_side, tok.pad_token = "left", tok.eos_token
        hits = 0
        for start in range(0, len(prompts), 25):
            batch = tok(prompts[start:start + 25], return_tensors="pt", padding=True)
            out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
            answers = tok.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
            hits += sum(a.strip() == r["response"] for a, r in zip(answers, rows[start:start + 25]))
        print(json.dumps({{"dtype": str(model.dtype), "exact_match": hits / len(rows)}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh["dtype"] == "torch.bfloat16"  # loaded as saved
    summary = json.loads((quickstart_run[0] / "summary.json").read_text())
    assert fresh["exact_match"] == pytest.approx(summary["exact_match_after"], abs=0.02)

    saved = torch.load(tmp_path / "logits.pt")
    live = live_logits(read_run(quickstart_run[0]), saved["ids"])
    diff = (saved["logits"] - live).abs()
    # bf16 compute: mean |Δ| measured 0.16 % of the mean |logit|, the largest 0.7 % of it
    assert diff.max() < 0.05 * live.abs().mean() and diff.mean() / live.abs().mean() < TOLERANCES["fp32"]
    # Top-1 agrees wherever the live model's choice is clear of bf16 noise: a near-tie (measured: the
    # same prompt-start position in every prompt, top two 0.03 apart) may flip, the answers may not.
    top2 = live.topk(2, dim=-1).values
    clear = top2[:, 0] - top2[:, 1] > 2 * diff.max()
    assert clear.float().mean() > 0.9
    assert torch.equal(saved["logits"][clear].argmax(-1), live[clear].argmax(-1))
    answer_starts = torch.tensor([len(i) for i in saved["ids"]]).cumsum(0) - 1  # each prompt's last position
    assert clear[answer_starts].all()


def test_merged_folder_passes_validate_quick(merged_quickstart):
    result = run_cli("validate", str(merged_quickstart[0] / "merged"), "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "checks passed" in result.stdout + result.stderr
    assert "No SentencePiece tokenizer.model" not in result.stderr  # the merged folder carries it


def test_nf4_and_int8_round_trips_equal_the_live_quantized_weights_bit_for_bit(quickstart_run, tiny_mistral):
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnb_f

    from finetune.lifecycle.merge_weights import LiveLayout, nf4_round_trip
    from finetune.lifecycle.shards import Checkpoint
    from finetune.model.load import load_base_model

    recipe = read_run(quickstart_run[0]).recipe
    base = Checkpoint(tiny_mistral)
    for quantization in ("4bit", "8bit"):
        cfg = recipe.model.model_copy(update={"quantization": quantization})
        layout, live = LiveLayout(tiny_mistral, cfg), load_base_model(cfg)
        checked = 0
        for name, module in live.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                expected = bnb_f.dequantize_4bit(module.weight.data, module.weight.quant_state)
            elif isinstance(module, bnb.nn.Linear8bitLt):
                expected = bnb_f.int8_vectorwise_dequant(module.weight.data, module.weight.SCB)
            else:
                continue
            param = layout.quantized_param(f"{name}.weight")
            assert param is not None, name
            assert torch.equal(layout.round_trip(base.get(f"{name}.weight"), param), expected), name
            checked += 1
        assert checked == 14  # 7 projections x 2 layers; lm_head stays unquantized in both
        assert layout.quantized_param("lm_head.weight") is None

    # A tensor bigger than one chunk (3 x 2**18 elements): chunked round trip == the whole-tensor call.
    w = torch.randn(1536, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    param = LiveLayout(tiny_mistral, recipe.model).quantized_param("model.layers.0.mlp.up_proj.weight")
    whole = bnb_f.dequantize_4bit(*bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4",
                                                       quant_storage=torch.float32))
    assert torch.equal(nf4_round_trip(w, param), whole)


def test_merging_onto_the_original_weights_instead_is_measurably_worse(quickstart_run, merged_fp32, tmp_path):
    """The alternative to the NF4 round trip, measured once: peft's merge onto the unquantized base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = read_run(quickstart_run[0])
    base = AutoModelForCausalLM.from_pretrained(folder.recipe.model.base, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(folder.adapter)).merge_and_unload().save_pretrained(tmp_path / "original")
    prompts, _ = check_prompts(folder)
    reference = live_logits(folder, prompts)
    ours = compare(reference, folder_logits(merged_fp32[0], folder.recipe.model, prompts), TOLERANCES["fp32"])
    original_logits = folder_logits(tmp_path / "original", folder.recipe.model, prompts)
    original = compare(reference, original_logits, TOLERANCES["fp32"])
    print(f"NF4 round trip: {ours}\noriginal weights: {original}")
    assert ours["passed"] and ours["relative_mean_diff"] < 1e-3  # 0.036 %: bnb's bf16 CPU kernel in the live model
    assert not original["passed"] and original["relative_mean_diff"] > 10 * ours["relative_mean_diff"]  # 1.09 %
    assert original["max_abs_diff"] > 0.3  # 0.70


def test_sharded_merge_writes_a_transformers_index_and_loads(quickstart_run, merged_fp32, tmp_path):
    from transformers import AutoModelForCausalLM

    out, report = merge_run(quickstart_run[0], tmp_path / "sharded", dtype="fp32", max_shard_size="6MB")
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert report["files"] == [*shards, "model.safetensors.index.json"] and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    single = tensors(merged_fp32[0] / "model.safetensors")
    assert set(index["weight_map"]) == set(single) and set(index["weight_map"].values()) == set(shards)
    for shard in shards:  # each file holds exactly what the index says, bit-identical to the one-file merge
        held = tensors(out / shard)
        assert set(held) == {k for k, v in index["weight_map"].items() if v == shard}
        assert all(torch.equal(held[k], single[k]) for k in held)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in single.values())
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reference = AutoModelForCausalLM.from_pretrained(merged_fp32[0]).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_unquantized_lora_run_merges_to_float_precision(tiny_mistral, tmp_path):
    run = tmp_path / "run"
    trained = run_cli(
        "train", "recipes/quickstart.yaml", "--output", str(run), "--set", f"model.base={tiny_mistral}",
        "--set", "model.quantization=none", "--set", "train.max_steps=5", "--set", "train.micro_batch_size=4",
        "--set", "eval.generate=false", "--set", "eval.loss=false", "--set", "data.sources.0.max_rows=40",
        "--set", "data.validation_sources.0.max_rows=8",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert merge(run, dtype="fp32", console=Console(stderr=True)) == 0
    report = json.loads((run / "merged/merge_report.json").read_text())
    assert report["base_weights"] == "checkpoint" and report["round_tripped"] == 0
    check = report["check"]
    assert check["passed"] and check["numerics"] == "fp32 compute"
    assert check["max_abs_diff"] < 1e-4 and check["relative_mean_diff"] < 1e-5  # ~1e-5 / 1e-7: float rounding
    merged, base = tensors(run / "merged/model.safetensors"), tensors(tiny_mistral / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert (merged[name] - base[name]).abs().max() > 1e-4  # five steps did move the weights


def test_dora_rslora_and_embedding_lora_merge_exactly(tiny_mistral, tmp_path):
    dora = synthetic_run(tmp_path / "dora", tiny_mistral, r=8, lora_alpha=16, use_dora=True, use_rslora=True,
                         target_modules=["q_proj", "v_proj", "down_proj", "lm_head"])
    report, check = merge_and_compare(dora, tmp_path / "dora-merged", dtype="fp32")
    assert report["lora_merged"] == 7 and check["max_abs_diff"] < 1e-4 and check["relative_mean_diff"] < 1e-5

    embedding = synthetic_run(tmp_path / "emb", tiny_mistral, r=4, lora_alpha=8,
                              target_modules=["embed_tokens", "o_proj"])
    report, check = merge_and_compare(embedding, tmp_path / "emb-merged", dtype="fp32")
    assert "model.embed_tokens.weight" in report["replaced"]  # peft saves the base embedding with its LoRA
    assert report["lora_merged"] == 3 and check["max_abs_diff"] < 1e-4 and check["relative_mean_diff"] < 1e-5

    refused = synthetic_run(tmp_path / "dora-emb", tiny_mistral, r=4, use_dora=True, target_modules=["embed_tokens"])
    with pytest.raises(FinetuneError, match="DoRA on the embedding"):
        merge_run(refused, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_8bit_run_merges_through_the_int8_round_trip(tiny_mistral, tmp_path):
    run = synthetic_run(tmp_path / "run", tiny_mistral, quantization="8bit", r=8, lora_alpha=16,
                        target_modules=["q_proj", "v_proj", "up_proj"])
    report, check = merge_and_compare(run, tmp_path / "merged", dtype="fp32")
    assert report["base_weights"] == "LLM.int8 round trip" and report["round_tripped"] == 14
    assert check["tolerance"] == TOLERANCES["8bit"] and check["passed"]  # measured 0.7 %: int8 activations


def test_tied_embeddings_are_untied_only_when_the_adapter_changes_them(tmp_path):
    from transformers import AutoModelForCausalLM

    from finetune.model.tiny import save_mistral_tokenizer, tiny_config

    config = tiny_config()
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    base = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    save_mistral_tokenizer("v1", base)
    assert "lm_head.weight" not in tensors(base / "model.safetensors")

    run = synthetic_run(tmp_path / "trains-embed", base, r=4, target_modules=["q_proj"],
                        modules_to_save=["embed_tokens"])
    report, check = merge_and_compare(run, tmp_path / "untied", dtype="fp32")
    assert report["untied"] == ["lm_head.weight"] and check["relative_mean_diff"] < 1e-5
    assert json.loads((tmp_path / "untied/config.json").read_text())["tie_word_embeddings"] is False
    merged = tensors(tmp_path / "untied/model.safetensors")
    original = tensors(base / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(merged["lm_head.weight"], original)  # peft's live head stays on the original embedding
    assert not torch.equal(merged["model.embed_tokens.weight"], original)

    run = synthetic_run(tmp_path / "attention-only", base, r=4, target_modules=["q_proj"])
    report, check = merge_and_compare(run, tmp_path / "still-tied", dtype="fp32")
    assert report["untied"] == [] and check["relative_mean_diff"] < 1e-5
    assert "lm_head.weight" not in tensors(tmp_path / "still-tied/model.safetensors")
    assert json.loads((tmp_path / "still-tied/config.json").read_text())["tie_word_embeddings"] is True


_PEAK_SCRIPT = """
import json, sys, threading, time
import bitsandbytes, huggingface_hub, peft, safetensors.torch  # every import before the baseline
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.mistral import modeling_mistral
from transformers.quantizers import AutoHfQuantizer
from finetune.lifecycle.merge import merge_run
from finetune.lifecycle.merge_weights import LiveLayout, read_adapter

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

def peak_mb(out, shard):
    peak, done = [0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon_kb())
            time.sleep(0.002)
    baseline = anon_kb()
    sampler = threading.Thread(target=sample)
    sampler.start()
    merge_run(sys.argv[1], out, dtype="bf16", max_shard_size=shard)
    done.set()
    sampler.join()
    return (max(peak[0], anon_kb()) - baseline) / 1024

print(json.dumps({out: peak_mb(out, shard) for out, shard in zip(sys.argv[2::2], sys.argv[3::2])}))
"""


def test_merge_streams_in_far_less_memory_than_one_copy_of_the_model(tmp_path):
    """Peak anonymous memory while merging a 148 MiB fp32 model into bf16 (74 MiB): a few shards' worth with
    4 MB shards, and (the control that shows the measurement can fail) the whole output when one shard
    must hold everything.  The vocabulary is cut to 1024 rows so no single tensor dominates."""
    from transformers import AutoModelForCausalLM

    from finetune.model.tiny import save_mistral_tokenizer, tiny_config

    base = tmp_path / "base"
    config = tiny_config(vocab_size=1024, hidden_size=512, intermediate_size=1536, num_layers=12)
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    save_mistral_tokenizer("v1", base)
    run = synthetic_run(tmp_path / "run", base, r=4, target_modules=["q_proj", "v_proj"])

    streamed, one_shard = str(tmp_path / "streamed"), str(tmp_path / "one-shard")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed buffers go back
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(run), streamed, "4MB", one_shard, "10GB"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    output_mb = sum(p.stat().st_size for p in (tmp_path / "one-shard").glob("*.safetensors")) / 2**20
    streamed, one_shard = peaks[streamed], peaks[one_shard]
    print(f"output {output_mb:.0f} MB: peak {streamed:.0f} MB with 4 MB shards, {one_shard:.0f} MB in one shard")
    assert streamed < 0.25 * output_mb
    assert one_shard > 0.9 * output_mb


@pytest.fixture
def run_copy(quickstart_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(quickstart_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "merged", "*.safetensors"))
    (run / "adapter/adapter_model.safetensors").symlink_to(quickstart_run[0] / "adapter/adapter_model.safetensors")
    return run


def _retarget(run: Path, base: str) -> None:
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(f"base: {read_run(run).recipe.model.base}", f"base: {base}"))


@pytest.mark.parametrize("case, expected", [
    ("no run folder", "is not a run folder: it has no recipe.yaml"),
    ("no adapter weights", "no adapter_model.safetensors"),
    ("corrupt adapter", "is not a readable safetensors file"),
    ("base without safetensors", "has no model.safetensors or model.safetensors.index.json (weight files found: "
                                 "pytorch_model.bin)"),
    ("base not cached", "could not be fetched from the Hugging Face Hub (HF_HUB_OFFLINE is set)"),
    ("output not empty", "already exists and is not empty; merge never overwrites a model"),
    ("bad dtype", "invalid choice: 'int4'"),
])
def test_bad_input_is_one_paragraph_and_exit_2(case, expected, run_copy, tmp_path):
    args = [str(run_copy)]
    if case == "no run folder":
        args = [str(tmp_path)]
    elif case == "no adapter weights":
        (run_copy / "adapter/adapter_model.safetensors").unlink()
    elif case == "corrupt adapter":
        (run_copy / "adapter/adapter_model.safetensors").unlink()
        (run_copy / "adapter/adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    elif case == "base without safetensors":
        (tmp_path / "bin-base").mkdir()
        shutil.copyfile(Path(read_run(run_copy).recipe.model.base) / "config.json", tmp_path / "bin-base/config.json")
        (tmp_path / "bin-base/pytorch_model.bin").write_bytes(b"pickle")
        _retarget(run_copy, str(tmp_path / "bin-base"))
    elif case == "base not cached":
        _retarget(run_copy, "mistral-ft-tests/not-in-any-cache")
    elif case == "output not empty":
        (run_copy / "merged").mkdir()
        (run_copy / "merged/keep.txt").write_text("mine")
    elif case == "bad dtype":
        args += ["--dtype", "int4"]
    result = run_cli("merge", *args, env={"HF_HOME": str(tmp_path / "hf-home")})
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    if case == "output not empty":
        assert sorted(p.name for p in (run_copy / "merged").iterdir()) == ["keep.txt"]
    elif case != "bad dtype":
        assert not (run_copy / "merged").exists()
