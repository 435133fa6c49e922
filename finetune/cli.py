"""The ``mistral-ft`` command line: commands and their flags only; each calls one library function.

A :class:`FinetuneError` (the user's to fix) is printed as one paragraph and exits with status 2;
anything else is a bug and keeps its traceback (status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from rich.console import Console

from finetune.errors import FinetuneError, Interrupted

EXAMPLES = """examples:
  mistral-ft train recipes/quickstart.yaml
  mistral-ft train recipes/quickstart-dpo.yaml --set model.adapter=runs/quickstart-<timestamp>
  mistral-ft train recipes/mistral-7b-qlora-instruct-v3.yaml --set train.max_steps=200 --set lora.r=32
  mistral-ft preprocess recipes/quickstart.yaml --show 2
  mistral-ft recipe check recipes/mistral-7b-qlora-instruct-v3.yaml
  mistral-ft recipe schema
  mistral-ft tiny-model models/tiny-mistral
  mistral-ft validate models/tiny-mistral
  mistral-ft validate mistralai/Mistral-7B-v0.1 --quick --json
  mistral-ft generate runs/quickstart-<timestamp> --prompt "Is a grape a fruit, an animal or a vehicle?"
  mistral-ft chat runs/quickstart-<timestamp> --temperature 0
  mistral-ft merge runs/quickstart-<timestamp> --dtype bf16
  mistral-ft push runs/quickstart-<timestamp> --repo my-user/quickstart-lora --private
"""


def build_parser() -> argparse.ArgumentParser:
    """All commands, flags and their help texts."""
    parser = argparse.ArgumentParser(
        prog="mistral-ft",
        description="Parameter-efficient fine-tuning (QLoRA / LoRA) of Mistral-family models, "
        "driven by one YAML recipe.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="fine-tune a model as a recipe says",
        description="Load the base model (4-bit / 8-bit / 16-32-bit), attach LoRA adapters (fresh, or "
        "model.adapter's), format and tokenize the data, train with TRL's SFTTrainer (train.method: sft, loss "
        "on responses only) or DPOTrainer (train.method: dpo, preference pairs) and write a run folder "
        "(resolved recipe, adapter, tokenizer, metrics.jsonl, loss.png, summary.json).",
    )
    train.add_argument("recipe", help="path of the YAML recipe")
    _add_set(train)
    train.add_argument(
        "--output", metavar="DIR", help="run folder to create (default: <output.dir>/<name>-<timestamp>); "
        "must be absent or empty",
    )
    train.add_argument(
        "--skip-validate", action="store_true",
        help="train even when the pre-training checks (config, [INST] template, attention parity) fail",
    )
    train.add_argument(
        "--resume", nargs="?", const="latest", metavar="CHECKPOINT",
        help="continue a run from a checkpoint (optimizer, scheduler, RNG and data position restored): a "
        "checkpoints/checkpoint-N folder, a run folder, or `latest` (the default) = the newest good checkpoint "
        "of the run in --output, or of the newest run of this recipe",
    )
    train.add_argument(
        "--nproc", type=_positive, default=1, metavar="N",
        help="train with N processes (one per GPU; gloo on a CPU machine) through `accelerate launch`",
    )
    train.add_argument(
        "--accelerate-config", metavar="YAML",
        help="with --nproc: an accelerate config such as configs/accelerate/fsdp.yaml (default: plain DDP)",
    )

    preprocess = commands.add_parser(
        "preprocess",
        help="read, check, tokenize and cache a recipe's data; report on it",
        description="Load, format and tokenize the recipe's data set and cache it (train reuses the cache; any "
        "change to the data files, format, columns, template, tokenizer or length policy makes a new one). "
        "Reports rows read / kept / truncated / dropped by reason, tokens per row (statistics, a histogram and "
        "data_lengths.png), the share of tokens carrying loss and the steps per epoch; bad rows per "
        "data.on_bad_row, with rejected.jsonl.",
    )
    preprocess.add_argument("recipe", help="path of the YAML recipe")
    _add_set(preprocess)
    preprocess.add_argument(
        "--show", type=int, default=0, metavar="N",
        help="print the first N training rows token by token: special tokens visible, trained tokens inside « »",
    )

    estimate = commands.add_parser(
        "estimate",
        help="predict a recipe's peak memory before loading the model, term by term",
        description="Read the model's config.json (no weights) and print the memory training the recipe will "
        "need at its peak: runtime, weights by quantization, LoRA weights + gradients + optimizer state, "
        "activations by micro-batch, length and checkpointing, attention mask, loss buffers (full logits for "
        "DPO), backward. Rows are taken at data.max_length. On CPU the figure is resident memory (RSS); on a "
        "GPU, memory allocated by torch. `train` warns when it is more than the device has free.",
    )
    estimate.add_argument("recipe", help="path of the YAML recipe")
    _add_set(estimate)

    recipe = commands.add_parser("recipe", help="inspect recipes: the schema, or a resolved recipe")
    recipe_commands = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    recipe_commands.add_parser("schema", help="list every recipe key with its type, default and meaning")
    check = recipe_commands.add_parser(
        "check", help="validate a recipe (and overrides) and print it with every default filled in"
    )
    check.add_argument("recipe", help="path of the YAML recipe")
    _add_set(check)

    validate = commands.add_parser(
        "validate",
        help="prove a model attends the way Mistral does (window, GQA, cache, template, training step)",
        description="Measure the model against a pure-PyTorch Mistral reference sharing its weights: config "
        "invariants and release consistency, the sliding-window mask each attention backend really applies "
        "(keys per row), logits parity at lengths < W, = W and 3W, window sensitivity, rolling KV cache and "
        "chunked prefill, the [INST] template token-for-token against mistral-common, and a finite "
        "forward + backward. Exit status 0 when every check passes, 1 when any fails, 2 for a bad target.",
    )
    validate.add_argument(
        "target", help="a model folder, a Hub id, a run folder (recipe.yaml + adapter/, merged on the fly) or a recipe YAML"
    )
    validate.add_argument(
        "--quick", action="store_true",
        help="cap every sequence at 256 tokens instead of 4096 (a real 7B on a CPU); a window longer than a "
        "third of the cap is scaled down for the window checks, and the rows say so",
    )
    validate.add_argument(
        "--max-length", type=int, metavar="N", help="cap every sequence at N tokens (0 = no cap: 3W tokens)"
    )
    validate.add_argument(
        "--backend", dest="backends", action="append", metavar="NAME",
        help="attention backend to check: eager, sdpa, flash_attention_2 (repeatable; default: every one "
        "that can run here)",
    )
    validate.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")

    generate = commands.add_parser(
        "generate",
        help="answer one prompt with a run, a merged model or a Hub model (streamed)",
        description="Load TARGET and print its answer to one prompt, streamed as it is produced. A run folder "
        "loads its recipe's base (quantization included) + the adapter, with the prompt format it trained on.",
    )
    generate.add_argument("target", help="a run folder (recipe.yaml + adapter/), a model folder or a Hub id")
    generate.add_argument("--prompt", required=True, metavar="TEXT", help="the user message; - reads it from stdin")
    _add_sampling(generate)

    chat = commands.add_parser(
        "chat",
        help="talk with a run, a merged model or a Hub model, several turns, answers streamed",
        description="An interactive conversation: the whole history is re-encoded in the model's format every "
        "turn (oldest turns dropped when it outgrows the context). /reset forgets it; /exit, Ctrl-D or Ctrl-C "
        "leave. With piped input, each line is a message and only the answers are printed.",
    )
    chat.add_argument("target", help="a run folder (recipe.yaml + adapter/), a model folder or a Hub id")
    _add_sampling(chat)

    push = commands.add_parser(
        "push",
        help="publish a run's adapter (or merged model) to the Hugging Face Hub with a generated model card",
        description="Upload RUN/adapter + RUN/tokenizer (or, with --merged, RUN/merged from `mistral-ft merge`) "
        "and a README.md model card (base model, method, LoRA settings, data, held-out metrics before -> after, "
        "the full recipe, a usage snippet) in one commit. The token comes from HF_TOKEN or `hf auth login` and "
        "is never printed. Transient Hub failures (5xx, dropped connections) are retried.",
    )
    push.add_argument("run", help="the run folder written by `mistral-ft train`")
    push.add_argument("--repo", required=True, metavar="ID", help="Hub repository: namespace/name, or name for your own")
    push.add_argument("--merged", action="store_true", help="push RUN/merged (a full model) instead of the adapter")
    push.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one keeps its visibility)"
    )
    push.add_argument("--revision", metavar="BRANCH", help="branch to commit to, created if missing (default: main)")
    push.add_argument(
        "--license", metavar="ID",
        help="licence in the card (default: the base model's, read from its card when it is on this machine; "
        "else apache-2.0, the licence of Mistral AI's open-weight models)",
    )

    merge = commands.add_parser(
        "merge",
        help="fold a run's adapter into its base: a plain model folder for transformers / vLLM / TGI",
        description="Stream the base checkpoint tensor by tensor, add the LoRA / DoRA update (QLoRA runs: onto the "
        "NF4 / int8 round-tripped weights the adapter was trained against), put in the modules_to_save copies, and "
        "write safetensors shards (5 GB), config.json, generation_config.json and the run's tokenizer. Then compare "
        "the merged model's logits with the live adapter model's on held-out prompts: exit status 0 when they "
        "agree within tolerance (written to merge_report.json), 1 when not, 2 for a bad run folder or flag.",
    )
    merge.add_argument("run", help="the run folder written by `mistral-ft train`")
    merge.add_argument("--output", metavar="DIR", help="folder to write (default: RUN/merged); must be absent or empty")
    merge.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], default="bf16",
        help="dtype of the merged weights (default bf16, what Mistral ships and servers run; fp32 keeps every bit)",
    )

    tiny = commands.add_parser(
        "tiny-model",
        help="write a tiny random Mistral/Mixtral with the real Mistral tokenizer (offline smoke tests)",
        description="Build a randomly initialised model of the real architecture at toy size with the real "
        "Mistral 7B tokenizer from the mistral-common package. Used by the quickstart and the tests; "
        "useful to smoke-test a recipe without downloading 15 GB.",
    )
    tiny.add_argument("out", help="folder to write")
    tiny.add_argument("--arch", choices=["mistral", "mixtral"], default="mistral", help="architecture")
    tiny.add_argument(
        "--tokenizer", choices=["v1", "v3"], default="v1",
        help="v1 = Mistral 7B v0.1 (vocab 32000), v3 = v0.3 (vocab 32768, [INST] control tokens)",
    )
    tiny.add_argument("--hidden-size", type=int, default=128, help="model width")
    tiny.add_argument("--layers", type=int, default=2, help="number of decoder layers")
    tiny.add_argument(
        "--sliding-window", type=int, default=None,
        help="attention window, 0 = none (default: as the tokenizer's release: 4096 for v1, none for v3)",
    )
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return parser


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value by its dotted path, e.g. --set lora.r=32 --set train.max_steps=200 "
        "(values are YAML: 3e-4, true, [q_proj, v_proj]); repeatable",
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    """--system and the decoding flags of generate and chat (defaults: Sampling in lifecycle/generate.py)."""
    from finetune.lifecycle.generate import Sampling

    d = Sampling()
    parser.add_argument("--system", metavar="TEXT", help="system prompt (placed where mistral-common puts it)")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, metavar="N",
                        help=f"most new tokens per answer (default {d.max_tokens})")
    parser.add_argument("--temperature", type=float, default=d.temperature, metavar="T",
                        help=f"sampling temperature, 0 = greedy (default {d.temperature}, as mistral-chat)")
    parser.add_argument("--top-p", type=float, default=d.top_p, metavar="P",
                        help=f"nucleus sampling: keep the most likely tokens up to P (default {d.top_p}, as "
                        "mistral-inference; 1 = off)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the sampling (default {d.seed})")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mistral-ft`` and ``python -m finetune``."""
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    secondary = int(os.environ.get("RANK", "0")) > 0  # a non-main process of `accelerate launch`
    if args.command not in ("recipe", "push"):  # these never import the ML stack: keep them instant
        _quiet_libraries()
    try:
        return _dispatch(args, console)
    except Interrupted as exc:
        if not secondary:
            console.print(f"[yellow]{exc.render()}[/]", highlight=False, soft_wrap=True)
        return 130
    except FinetuneError as exc:
        if not (secondary and getattr(exc, "raised_everywhere", False)):  # the main process says it once
            prefix = f"process {os.environ['RANK']}: " if secondary else ""
            console.print(f"[bold red]error:[/] {prefix}{exc.render()}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except BrokenPipeError:  # `mistral-ft recipe schema | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _dispatch(args, console: Console) -> int:
    if args.command == "train":
        from finetune.recipe.load import load_recipe
        from finetune.train.run import train

        recipe = load_recipe(args.recipe, args.overrides)  # a bad recipe fails here, before any launch
        if args.nproc > 1:
            from finetune.train.launch import launch

            return launch(args.nproc, _train_args(args), args.accelerate_config, console)
        from finetune.train import distributed

        try:
            train(recipe, output=args.output, console=console, skip_validate=args.skip_validate, resume=args.resume)
        finally:
            distributed.shutdown()
        return 0
    if args.command == "preprocess":
        from finetune.data.preprocess import preprocess
        from finetune.recipe.load import load_recipe

        preprocess(load_recipe(args.recipe, args.overrides), args.show, console)
        return 0
    if args.command == "estimate":
        from finetune.recipe.load import load_recipe
        from finetune.train.memory import estimate_command

        print(estimate_command(load_recipe(args.recipe, args.overrides)))
        return 0
    if args.command == "recipe":
        from finetune.recipe.describe import describe_schema, dump_recipe
        from finetune.recipe.load import load_recipe

        if args.recipe_command == "schema":
            print(describe_schema())
        else:
            print(dump_recipe(load_recipe(args.recipe, args.overrides)), end="")
        return 0
    if args.command == "validate":
        from finetune.validate import validate

        return validate(
            args.target, quick=args.quick, backends=args.backends, max_length=args.max_length,
            as_json=args.json, console=console,
        )
    if args.command in ("generate", "chat"):
        from finetune.lifecycle.generate import Sampling

        sampling = Sampling(args.max_tokens, args.temperature, args.top_p, args.seed)
        if args.command == "generate":
            from finetune.lifecycle.generate import generate

            return generate(args.target, args.prompt, args.system, sampling, console)
        from finetune.lifecycle.chat import chat

        return chat(args.target, args.system, sampling, console)
    if args.command == "push":
        from finetune.lifecycle.push import push

        result = push(args.run, args.repo, merged=args.merged, private=args.private, revision=args.revision,
                      license=args.license, console=console)
        print(f"pushed {len(result.files)} files to {result.url}")
        print("\n".join(f"  {name}" for name in result.files))
        return 0
    if args.command == "merge":
        from finetune.lifecycle.merge import merge

        return merge(args.run, output=args.output, dtype=args.dtype, console=console)
    if args.command == "tiny-model":
        from finetune.model.tiny import build_tiny_model

        window = {} if args.sliding_window is None else {"sliding_window": args.sliding_window or None}
        out = build_tiny_model(
            args.out, arch=args.arch, tokenizer=args.tokenizer, seed=args.seed, hidden_size=args.hidden_size,
            intermediate_size=3 * args.hidden_size, num_layers=args.layers, **window,
        )
        console.print(f"wrote {out}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _train_args(args) -> list[str]:
    """The ``train`` arguments again, without --nproc, for each launched process."""
    out = [args.recipe]
    for override in args.overrides or []:
        out += ["--set", override]
    if args.output:
        out += ["--output", args.output]
    if args.resume:
        out += ["--resume", args.resume]
    if args.skip_validate:
        out.append("--skip-validate")
    return out


def _quiet_libraries() -> None:
    """Keep the terminal for our own output: library chatter goes, errors stay."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are hard dependencies
        pass


if __name__ == "__main__":
    sys.exit(main())
