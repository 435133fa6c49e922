"""``mistral-ft chat``: a multi-turn conversation with a run or a model, answers streamed as produced.

Every turn the whole conversation is encoded again with the target's template (for Mistral,
``<s>[INST] q1 [/INST] a1</s>[INST] q2 [/INST]``, token-exact with mistral-common), exactly the
path held-out prompts take in training (``Template.encode_prompt``). When the conversation no
longer fits the context (the run's ``data.max_length`` or the model's ``max_position_embeddings``)
with room left for an answer, the oldest turns are dropped, and the user is told once.

On a terminal the user gets a ``you>`` prompt with line editing, and a dim line of token counts and
time after each answer. When standard input or output is not a terminal (``printf 'hi\\n/exit\\n' |
mistral-ft chat RUN``) each input line is one message and standard output holds only the answers,
separated by blank lines; notices go to standard error. ``/reset`` forgets the conversation,
``/exit``, end of input (Ctrl-D) and Ctrl-C leave with status 0.
"""

from __future__ import annotations

import sys
from typing import TextIO

from finetune.data.conversation import Message
from finetune.lifecycle.generate import Answer, Sampling, reader_gone, seed_everything, stream_answer

HELP = "commands: /reset forgets the conversation, /exit leaves (so do Ctrl-D and Ctrl-C)"
PROMPT = "you> "


class History:
    """The conversation so far, as (user, assistant) turns, encoded on demand by ``template``."""

    def __init__(self, template, system: str | None = None):
        self.template = template
        self.system = system
        self.turns: list[tuple[str, str]] = []

    def messages(self, user: str, skip: int = 0) -> list[Message]:
        """The conversation without its ``skip`` oldest turns, ending with the new ``user`` message
        (system prompt first, when set)."""
        out: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in self.turns[skip:]:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return [*out, {"role": "user", "content": user}]

    def prompt(self, user: str, budget: int) -> tuple[list[int], int]:
        """Prompt ids for ``user`` after the history, and how many oldest turns must go to keep them within
        ``budget`` tokens (the history is not changed: :meth:`forget_oldest` does that). With every turn
        left out the ids may still exceed the budget."""
        for skip in range(len(self.turns) + 1):
            ids = self.template.encode_prompt(self.messages(user, skip))
            if len(ids) <= budget:
                break
        return ids, skip

    def forget_oldest(self, count: int) -> None:
        del self.turns[:count]

    def record(self, user: str, answer: str) -> None:
        self.turns.append((user, answer.strip()))

    def reset(self) -> None:
        self.turns.clear()


class Session:
    """A loaded target, the conversation with it, and the context budget of each prompt."""

    def __init__(self, target, sampling: Sampling, system: str | None = None):
        self.target = target
        self.sampling = sampling
        self.history = History(target.template, system)
        self.reserve = min(sampling.max_tokens, target.context // 2)  # room always left for the answer
        self.warned_drop = False

    @property
    def budget(self) -> int:
        """The longest prompt sent: the context minus the room reserved for the answer."""
        return self.target.context - self.reserve

    def prompt(self, user: str, notice) -> list[int] | None:
        """Prompt ids for ``user`` after the history, oldest turns dropped to fit; None when the message
        alone does not fit the context (``notice`` says so)."""
        ids, dropped = self.history.prompt(user, self.budget)
        if len(ids) > self.budget:  # the conversation so far is kept for the next message
            notice(f"your message is {len(ids):,} tokens with the template; the context holds {self.target.context:,} "
                   f"with {self.reserve:,} kept for the answer: shorten it")
            return None
        self.history.forget_oldest(dropped)
        if dropped and not self.warned_drop:
            notice(f"the conversation outgrew the context ({self.target.context:,} tokens, {self.reserve:,} kept for "
                   "the answer): dropped the oldest turns (older turns are dropped the same way from now on)")
            self.warned_drop = True
        return ids

    def answer(self, user: str, ids: list[int], write) -> Answer:
        """Stream the answer to ``ids`` through ``write`` and add the turn to the history."""
        answer = stream_answer(self.target, ids, self.sampling, write, max_new_tokens=self.target.context - len(ids))
        self.history.record(user, answer.text)
        return answer


def chat(target: str, system: str | None, sampling: Sampling, console,
         stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``mistral-ft chat``: load TARGET and converse until /exit, end of input or Ctrl-C (status 0)."""
    from finetune.lifecycle.target import load_for_inference

    sampling.check()
    with console.status(f"loading {target}"):
        loaded = load_for_inference(target)
    return converse(loaded, system, sampling, console, stdin, stdout)


def converse(loaded, system: str | None, sampling: Sampling, console,
             stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """The conversation with an already loaded InferenceTarget (see the module docstring); status 0."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    terminal = stdin.isatty() and stdout.isatty()
    if terminal:
        import readline  # noqa: F401  (line editing and history for input())

        console.print(f"[dim]{loaded.description}[/]\n[dim]{HELP}[/]", highlight=False)
    seed_everything(sampling.seed)
    session = Session(loaded, sampling, system)
    try:
        _loop(session, terminal, console, stdin, stdout)
        stdout.flush()
    except KeyboardInterrupt:
        stdout.write("\n")
        stdout.flush()
    except BrokenPipeError:
        return reader_gone()
    return 0


def _read(terminal: bool, stdin: TextIO, stdout: TextIO) -> str | None:
    """The next message, or None at end of input (Ctrl-D on a terminal)."""
    if terminal:
        try:
            return input(PROMPT)  # the terminal is sys.stdin / sys.stdout
        except EOFError:
            stdout.write("\n")
            return None
    line = stdin.readline()
    return line.rstrip("\n") if line else None


def _loop(session: Session, terminal: bool, console, stdin: TextIO, stdout: TextIO) -> None:
    """Read, dispatch commands, answer; returns on /exit or end of input."""

    def write(piece: str) -> None:
        stdout.write(piece)
        stdout.flush()

    def notice(text: str) -> None:
        console.print(f"[yellow]{text}[/]", highlight=False)

    answered = 0
    while (line := _read(terminal, stdin, stdout)) is not None:
        message = line.strip()
        if not message:
            continue
        if message.startswith("/"):
            command = message.split()[0]
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                session.history.reset()
                notice("conversation forgotten")
            else:
                notice(f"unknown command {command}; {HELP}")
            continue
        ids = session.prompt(message, notice)
        if ids is None:
            continue
        if answered and not terminal:
            write("\n")  # a blank line between answers
        answer = session.answer(message, ids, write)
        answered += 1
        write("\n")
        if terminal:
            rate = answer.new_tokens / answer.seconds if answer.seconds else 0.0
            console.print(f"[dim]({answer.prompt_tokens} prompt tokens, {answer.new_tokens} new, "
                          f"{answer.seconds:.2f} s, {rate:.1f} tokens/s)[/]", highlight=False)
