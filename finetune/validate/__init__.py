"""``mistral-ft validate``: prove that a model attends the way Mistral does.

    from finetune.validate import run_checks, fast_subset
    rows = run_checks("models/tiny-mistral")            # folder, Hub id, runs/<x>/ or recipe.yaml
    rows = run_checks(path, quick=True)                  # lengths capped at 256 (a real 7B on a CPU)
    assert all(r.passed for r in rows)

Each check is a function returning one :class:`CheckResult` row (``checks_*.py``, one module per
concept: config, template, attention, cache, training); :mod:`.report` prints them as a table or JSON.
The reference is :mod:`finetune.native`, a pure-PyTorch Mistral sharing the model's weights, in
which every rule (window ``i - W < j <= i``, grouped KV heads, RoPE layout, rolling cache) is
written out once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from finetune.errors import FinetuneError

from .checks_attention import available_backends, check_parity, check_sensitivity, check_window_keys, known_backend
from .checks_cache import cache_checks, check_hf_decode
from .checks_config import config_checks
from .checks_template import template_checks
from .checks_training import check_training_step
from .report import CheckResult, exit_status, render_table, to_json
from .probe import DEFAULT_MAX_LENGTH, QUICK_LENGTH, Probe, length_cap
from .subject import Subject
from .target import resolve_target

__all__ = [
    "CheckResult",
    "DEFAULT_MAX_LENGTH",
    "QUICK_LENGTH",
    "Subject",
    "available_backends",
    "exit_status",
    "fast_subset",
    "render_table",
    "resolve_target",
    "run_checks",
    "to_json",
    "validate",
]

Progress = Callable[[str], object]


def _backends(backends: Iterable[str] | None) -> list[str]:
    chosen = list(backends) if backends else available_backends()
    for name in chosen:
        if name == "flash_attention_2" and name not in available_backends():
            raise FinetuneError(
                "flash_attention_2 cannot run here: it needs the flash-attn package and a CUDA GPU.",
                hint="Leave --backend out to check every backend that can run (eager, sdpa).",
            )
        if not known_backend(name):
            raise FinetuneError(
                f"Unknown attention backend {name!r}.",
                hint="Use eager, sdpa or flash_attention_2 (or a name registered with transformers' "
                "AttentionInterface).",
            )
    return chosen


def run_checks(
    target: Any,
    quick: bool = False,
    backends: Iterable[str] | None = None,
    *,
    max_length: int | None = None,
    progress: Progress | None = None,
) -> list[CheckResult]:
    """Every check on ``target``, in order: config, template, attention per backend, cache, training.

    ``target``: a model folder, a Hub id, a run folder (``recipe.yaml`` + ``adapter/``, merged on the
    fly), a recipe YAML, a :class:`~finetune.recipe.schema.Recipe`, or a :class:`Subject` (e.g.
    ``Subject.from_live(model, tokenizer)``; a test can break its model first). Sequence lengths are
    capped at :data:`DEFAULT_MAX_LENGTH` (4096) tokens, at :data:`QUICK_LENGTH` (256) with ``quick``
    (a real 7B on a CPU), or at ``max_length`` (0 = no cap); a window longer than a third of the
    cap is scaled down for the window rows, which say so. ``backends`` defaults to
    every one that can run here. A bad target raises :class:`FinetuneError`.
    """
    say = progress or (lambda message: None)
    chosen = _backends(backends)
    say("loading the model")
    subject = resolve_target(target)
    probe = Probe(subject, length_cap(quick, max_length))
    say("config and template")
    rows = config_checks(subject) + template_checks(subject)
    if subject.declared is None:  # invalid numbers: nothing can run on this config
        return rows
    for backend in chosen:
        say(f"attention mask, parity and window sensitivity ({backend})")
        rows += [check_window_keys(probe, backend), check_parity(probe, backend), check_sensitivity(probe, backend)]
    say("rolling KV cache")
    rows += cache_checks(probe)
    for backend in chosen:
        say(f"transformers' KV cache ({backend})")
        rows.append(check_hf_decode(probe, backend))
    say("training step")
    rows.append(check_training_step(probe))
    return rows


def fast_subset(target: Any, *, length: int = 32, backend: str | None = None) -> list[CheckResult]:
    """The checks ``mistral-ft train`` runs before training: config, template, one short parity check.

    Seconds on a tiny model; on a real model the cost is three float32 forwards of at most
    ``length`` tokens (plus, when ``target`` is a path or recipe, loading the base in float32: 4 bytes
    a parameter).
    To reuse a model already loaded for training, pass ``Subject.from_live(model, tokenizer,
    template_choice=recipe.data.template)`` - with unquantized weights the parity row shares them;
    quantized or adapter-wrapped, the parity row reports itself skipped (``passed=True``). The parity
    row runs ``backend`` (default: the model's configured attention, i.e. the recipe's) at lengths
    ``W - 1, W, 3 W`` capped at ``length`` (a longer window is scaled down to fit, as with
    ``--quick``). Train should stop on any failing row and print the rows with :func:`render_table`.
    """
    subject = resolve_target(target)
    rows = config_checks(subject) + template_checks(subject)
    if subject.declared is None:
        return rows
    probe = Probe(subject, cap=max(8, min(length, 3 * subject.window) if subject.window else length))
    backend = backend or subject.model.config._attn_implementation or "sdpa"
    rows.append(check_parity(probe, backend))
    return rows


def validate(
    target: str,
    *,
    quick: bool = False,
    backends: Iterable[str] | None = None,
    max_length: int | None = None,
    as_json: bool = False,
    console=None,
) -> int:
    """``mistral-ft validate``: run every check, print a table (failing rows first) or JSON on
    stdout, return the exit status (0 all passed, 1 any failed). Progress goes to ``console``
    (stderr); a bad target raises :class:`FinetuneError` (the CLI's exit status 2)."""
    from contextlib import nullcontext

    from rich.console import Console

    chosen = _backends(backends)
    status = console.status("validating", spinner="dots") if console is not None and not as_json else nullcontext()
    with status as spinner:
        def say(message: str) -> None:
            if spinner is not None:
                spinner.update(f"validating: {message}")

        say("loading the model")
        subject = resolve_target(target)
        rows = run_checks(subject, quick, chosen, max_length=max_length, progress=say)
    if as_json:
        print(to_json(rows, subject.describe()))
    else:
        about = subject.describe()
        window = about["sliding_window"] or "none"
        theta = f"{about['rope_theta']:g}".replace("e+0", "e").replace("e+", "e")
        title = (f"mistral-ft validate {subject.name}: {about['architecture']}, {about['layers']} layers, "
                 f"window {window}, rope theta {theta}, vocab {about['vocab_size']}")
        render_table(rows, Console(), title=title)
        for note in subject.notes:
            Console().print(f"note: {note}", highlight=False)
    return exit_status(rows)
