"""``mistral-ft push``: publish a run's adapter (or its merged model) to the Hugging Face Hub.

One commit holds the files and a generated model card (:mod:`finetune.lifecycle.model_card`):

* adapter (default): ``adapter/*`` (peft's own README.md excepted) and ``tokenizer/*`` at the root of
  the repository, so ``PeftModel.from_pretrained(base, repo)`` and ``AutoTokenizer.from_pretrained(repo)``
  both work;
* ``--merged``: everything in ``RUN/merged/``, the full model ``mistral-ft merge RUN`` writes.

The work is huggingface_hub's: ``create_repo`` → ``create_branch`` → ``preupload_lfs_files`` (Xet
when ``hf_xet`` is installed, else LFS) → ``create_commit``.  Everything we can check without the
network — run folder, repo id (the Hub client's own validator), offline mode, token — is checked
first.  The token comes from ``HF_TOKEN`` or the stored login (``huggingface_hub.get_token``) and goes
only into the client's ``Authorization`` header: it is never printed, logged or written anywhere.

Retries: huggingface_hub already retries, with backoff, the preupload, LFS batch, LFS upload and
verify requests (``http_backoff``: 429, 5xx, timeouts, network errors) and Xet retries its own
transfers.  Repository creation, branch creation, README validation and the commit itself are sent
once by the client; :meth:`_Hub.call` retries those on the same transient failures, with a
delay doubling from :data:`RETRY_DELAY_S` (``MISTRAL_FT_PUSH_RETRY_DELAY`` overrides it, for tests),
reporting each retry in one line.  A commit whose answer was lost in transit may land twice; its
content is the same both times.  huggingface_hub sets no read timeout (a large commit can take
minutes) and we keep it that way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from rich.console import Console

from finetune.errors import FinetuneError

RETRY_ATTEMPTS = 5
RETRY_DELAY_S = float(os.environ.get("MISTRAL_FT_PUSH_RETRY_DELAY", "2"))
TRANSIENT_STATUS = (429, 500, 502, 503, 504)
CARD_NAME = "README.md"

T = TypeVar("T")


@dataclass(frozen=True)
class PushResult:
    """What was published: the repository's URL, the branch, and the files of the commit."""

    url: str
    repo_id: str
    revision: str
    files: list[str]
    commit_url: str


def push(
    run_dir: str | Path,
    repo_id: str,
    *,
    merged: bool = False,
    private: bool = False,
    revision: str | None = None,
    license: str | None = None,
    console: Console | None = None,
) -> PushResult:
    """Upload the run's adapter (or merged model) and a model card to ``repo_id`` on ``revision``."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    from finetune.lifecycle.model_card import render_model_card, resolve_license
    from finetune.recipe.load import load_recipe

    console = console or Console(stderr=True)
    run = _check_run_dir(Path(run_dir).expanduser())
    _check_repo_id(repo_id)
    files = upload_files(run, merged)
    revision = revision or constants.DEFAULT_REVISION
    if constants.is_offline_mode():
        raise FinetuneError(
            "HF_HUB_OFFLINE is set, so the Hugging Face Hub cannot be reached and nothing was pushed.",
            hint="Unset HF_HUB_OFFLINE (or set it to 0) on a machine with network, then run the push again.",
        )
    token = _token()
    recipe = load_recipe(run / "recipe.yaml")
    license_id, license_origin = resolve_license(recipe, license)
    console.print(f"licence: {license_id} ({license_origin})")

    api = HfApi(token=token)
    hub = _Hub(api.endpoint, console)
    repo_url = hub.call("creating the repository", lambda: api.create_repo(
        repo_id, private=True if private else None, exist_ok=True))
    repo_id = repo_url.repo_id  # the Hub adds the user's namespace to a bare name
    if revision != constants.DEFAULT_REVISION:
        hub.call(f"creating branch {revision!r}", lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))

    card = render_model_card(run, recipe, repo_id, merged=merged, license=license_id, revision=revision)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode()))
    size = sum(path.stat().st_size for _, path in files) / 1e6
    console.print(f"pushing {len(operations)} files ({size:.1f} MB) to {repo_url} (branch {revision})")
    hub.call("uploading the files", lambda: api.preupload_lfs_files(repo_id, additions=operations, revision=revision),
             retry=False)  # huggingface_hub retries these requests itself
    what = "merged model" if merged else "LoRA adapter"
    commit = hub.call(f"committing to {repo_id}", lambda: api.create_commit(
        repo_id, operations, commit_message=f"Upload {what} from mistral-ft run {run.name}", revision=revision))
    url = str(repo_url) if revision == constants.DEFAULT_REVISION else f"{repo_url}/tree/{revision}"
    return PushResult(url, repo_id, revision, [op.path_in_repo for op in operations], commit.commit_url)


def upload_files(run: Path, merged: bool) -> list[tuple[str, Path]]:
    """(path in the repository, local file) for everything the push uploads except the model card."""
    if merged:
        folder = run / "merged"
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            raise FinetuneError(
                f"{folder} does not hold a merged model (config.json + *.safetensors), so --merged has nothing "
                "to push.",
                hint=f"Run `mistral-ft merge {run}` first, or push the adapter (drop --merged).",
            )
        return _files_under(folder)
    return _files_under(run / "adapter") + _files_under(run / "tokenizer")


def _files_under(folder: Path) -> list[tuple[str, Path]]:
    """The files of ``folder`` (recursively) by their path relative to it; a README.md of its own is skipped."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(p.relative_to(folder).as_posix(), p) for p in files if p.relative_to(folder).as_posix() != CARD_NAME]


def _check_run_dir(run: Path) -> Path:
    """``run`` if it is a finished run folder: resolved recipe, summary and a saved adapter."""
    if not run.is_dir():
        raise FinetuneError(f"No such run folder: {run}.", hint="Check the path; runs are written under runs/ by default.")
    missing = [name for name in ("recipe.yaml", "summary.json", "adapter/adapter_config.json") if not (run / name).is_file()]
    if missing:
        raise FinetuneError(
            f"{run} is not a finished mistral-ft run folder: {', '.join(missing)} missing.",
            hint="Pass the folder `mistral-ft train` printed as its run folder, after the training finished.",
        )
    return run


def _check_repo_id(repo_id: str) -> None:
    """The Hub client's own repo id rules, before any request is made."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FinetuneError(
            f"--repo {repo_id!r} is not a valid Hugging Face repository id: {err}",
            hint="Use `name` or `namespace/name` (letters, digits, '-', '_', '.'), e.g. --repo my-user/mistral-7b-lora.",
        ) from None


def _token() -> str:
    """The user's Hub token (HF_TOKEN, else the stored login); the value is never shown."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise FinetuneError(
            "No Hugging Face token found: pushing needs one with write access.",
            hint="Run `hf auth login` (it stores the token), or set HF_TOKEN to a write token from "
            "https://huggingface.co/settings/tokens.",
        )
    return token


class _Hub:
    """Runs one Hub step, retrying transient failures and turning the rest into a FinetuneError."""

    def __init__(self, endpoint: str, console: Console):
        self.endpoint, self.console = endpoint, console

    def call(self, step: str, fn: Callable[[], T], retry: bool = True) -> T:
        attempts, attempt = (RETRY_ATTEMPTS if retry else 1), 1
        while True:
            try:
                return fn()
            except Exception as exc:
                reason = transient_reason(exc)
                if reason is None or attempt == attempts:
                    error = self.explain(exc, step, reason, attempt if retry else None)
                    if error is exc:
                        raise
                    raise error from None
                delay = RETRY_DELAY_S * 2 ** (attempt - 1)
                attempt += 1
                self.console.print(f"{reason}; retrying in {delay:g} s (attempt {attempt}/{attempts})")
                time.sleep(delay)

    def explain(self, exc: Exception, step: str, transient: str | None, attempts: int | None) -> Exception:
        """A FinetuneError for a failure the user can act on; other exceptions are returned unchanged (bugs).

        ``attempts`` is how often we sent the step, None where huggingface_hub did the retrying.
        """
        import httpx
        from huggingface_hub.errors import HfHubHTTPError

        status, cause = _status(exc), _cause(exc)
        tries = " (after huggingface_hub's own retries)" if attempts is None else f" ({attempts} attempts)"
        if status in (401, 403):
            return FinetuneError(
                f"The Hub at {self.endpoint} refused {step} ({status}): the token lacks write access to that "
                "repository or namespace, or is no longer valid.",
                hint="Use a token with the `write` role (https://huggingface.co/settings/tokens) via `hf auth "
                "login` or HF_TOKEN, and check that you may create repositories in that namespace.",
            )
        if transient and isinstance(cause, HfHubHTTPError):
            return FinetuneError(
                f"The Hub at {self.endpoint} kept failing while {step}: {transient}{tries}. No commit was made.",
                hint="The Hub may be down or overloaded (https://status.huggingface.co); run the same push again later.",
            )
        if isinstance(cause, httpx.TransportError):
            return FinetuneError(
                f"Could not reach the Hugging Face Hub at {self.endpoint} while {step}: "
                f"{transient or type(cause).__name__}{tries}.",
                hint="Check the network connection (and HF_ENDPOINT, if you set it), then run the push again.",
            )
        if isinstance(cause, ConnectionError):  # hf_xet reports its transfer failures this way
            return FinetuneError(
                f"Uploading to the Hub's Xet storage failed while {step}: {str(cause).rstrip('.')}.",
                hint=f"Run the push again; if {self.endpoint} offers no Xet storage, set HF_HUB_DISABLE_XET=1 to "
                "upload through Git LFS instead.",
            )
        if isinstance(cause, HfHubHTTPError):
            detail = cause.server_message or str(cause).strip().splitlines()[0]
            return FinetuneError(f"The Hub at {self.endpoint} refused {step} ({status}): {detail}")
        if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
            return FinetuneError(
                f"The Hub rejected the model card's metadata: {exc}",
                hint="Check --license: it must be a licence id the Hub knows, such as apache-2.0, mit or other.",
            )
        return exc


def transient_reason(exc: Exception) -> str | None:
    """One line saying why ``exc`` is worth a retry (5xx, 429, dropped or timed-out connection), else None."""
    import httpx

    status, cause = _status(exc), _cause(exc)
    if status in TRANSIENT_STATUS:
        return f"Hub answered {status}"
    if isinstance(cause, httpx.TimeoutException):
        return f"request timed out ({type(cause).__name__})"
    if isinstance(cause, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return f"connection failed ({type(cause).__name__}: {cause})"
    return None


def _cause(exc: BaseException) -> BaseException:
    """The HTTP or transport error behind ``exc``: the LFS upload wraps them in a RuntimeError."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    seen = exc
    while seen is not None:
        if isinstance(seen, (HfHubHTTPError, httpx.TransportError)):
            return seen
        seen = seen.__cause__
    return exc


def _status(exc: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    cause = _cause(exc)
    if isinstance(cause, HfHubHTTPError) and cause.response is not None:
        return cause.response.status_code
    return None
