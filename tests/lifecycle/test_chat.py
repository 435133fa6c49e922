"""``mistral-ft chat``: the history is Mistral's format token for token, a real terminal gets streamed
answers with the conversation kept and reset, piped input gets only the answers, and a conversation
longer than the context drops its oldest turns instead of failing."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from rich.console import Console

from finetune.data.template import MistralTemplate
from finetune.lifecycle.chat import History, Session, converse
from finetune.lifecycle.generate import Sampling
from finetune.lifecycle.target import InferenceTarget, load_for_inference
from tests.conftest import REPO

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
STATS = re.compile(r"\((\d+) prompt tokens, (\d+) new, ([\d.]+) s")


def held_out(n: int) -> list[tuple[str, str]]:
    """The first ``n`` held-out quickstart rows as (instruction on one line, reference answer).

    Chat reads one line per message, so the instruction's blank line becomes a space.
    """
    rows = [json.loads(line) for line in (REPO / "data/quickstart/eval.jsonl").read_text().splitlines()[:n]]
    instructions = [r["prompt"].split("### Instruction\n")[1].split("\n\n### Response")[0] for r in rows]
    return [(" ".join(text.split()), r["response"]) for text, r in zip(instructions, rows)]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


LABELS = {"positive", "negative", "fruit", "animal", "vehicle"}  # every quickstart answer is one of these


@pytest.fixture(scope="module")
def loaded_run(quickstart_run):
    """The trained quickstart run, loaded in this process as chat loads it."""
    return load_for_inference(str(quickstart_run[0]))


def greedy(target, messages) -> str:
    """What the loaded quickstart model answers to ``messages`` in Mistral's format, with plain
    ``generate`` and no chat code: the reference a chat answer must equal token for token.

    The tiny model learned single turns only, so a turn deep in a conversation may get a label other
    than the reference one; the chat is right when it answers what the model answers to that history.
    """
    import torch

    ids = torch.tensor([target.template.encode_prompt(messages)])
    with torch.no_grad():
        out = target.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                    do_sample=False, pad_token_id=target.tokenizer.pad_token_id)
    return target.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------- history in Mistral's format


@pytest.fixture(scope="module")
def templates():
    """The Mistral template over the real v1 and v3 SentencePiece models, with mistral-common's references.

    Built straight from the SentencePiece files mistral-common ships (what the template encodes
    prompt segments with), skipping the slow conversion to a Hugging Face tokenizer.
    """
    from sentencepiece import SentencePieceProcessor

    from finetune.data.text_encoder import TextEncoder
    from finetune.model.tiny import mistral_common_tokenizer_file

    out = {}
    for version, reference in (("v1", MistralTokenizer.v1()), ("v3", MistralTokenizer.v3())):
        sp = SentencePieceProcessor(model_file=str(mistral_common_tokenizer_file(version)))
        inst = (sp.piece_to_id("[INST]"), sp.piece_to_id("[/INST]")) if version == "v3" else None
        encoder = TextEncoder(sp.encode, exact=True, kind="sentencepiece")
        out[version] = (MistralTemplate(encoder, sp.bos_id(), sp.eos_id(), inst), reference)
    return out


def mistral_common_prompt(reference, system, messages) -> list[int]:
    classes = {"user": UserMessage, "assistant": AssistantMessage}
    turns = [SystemMessage(content=system)] if system else []
    turns += [classes[m["role"]](content=m["content"]) for m in messages]
    return reference.encode_chat_completion(ChatCompletionRequest(messages=turns)).tokens


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("system", [None, "Answer in one word."])
def test_history_encodes_the_conversation_as_mistral_common(templates, version, system):
    template, reference = templates[version]
    history = History(template, system)
    history.record("Hi there", "Hello! How can I help?")
    history.record("Count to 3.", " 1, 2, 3.\n")  # decoded answers keep stray whitespace; the history trims it
    ids, dropped = history.prompt("Thanks, and to 4?", budget=10_000)
    expected = [user("Hi there"), assistant("Hello! How can I help?"), user("Count to 3."), assistant("1, 2, 3."),
                user("Thanks, and to 4?")]
    assert dropped == 0
    assert ids == mistral_common_prompt(reference, system, expected)


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_history_drops_oldest_turns_to_fit_and_keeps_the_system_prompt(templates, version):
    template, reference = templates[version]
    system = "Be brief."
    history = History(template, system)
    turns = [("first question " * 5, "first answer"), ("second question", "second answer"), ("third", "third answer")]
    for question, answer in turns:
        history.record(question, answer)
    kept = [user("second question"), assistant("second answer"), user("third"), assistant("third answer"),
            user("fourth")]
    budget = len(mistral_common_prompt(reference, system, kept))
    ids, dropped = history.prompt("fourth", budget)
    assert dropped == 1
    assert ids == mistral_common_prompt(reference, system, kept)  # system prompt still where mistral-common puts it
    assert len(history.turns) == 3  # asking does not change the history ...
    history.forget_oldest(dropped)  # ... the session drops the turns once the prompt is sent
    assert [q for q, _ in history.turns] == ["second question", "third"]
    assert history.prompt("fourth", budget) == (ids, 0)
    history.reset()
    assert history.prompt("fourth", budget)[0] == mistral_common_prompt(reference, system, [user("fourth")])


def test_session_refuses_a_message_longer_than_the_context(templates):
    template, _ = templates["v1"]
    target = InferenceTarget(None, None, template, "template only: no model is needed to build prompts", context=64)
    session = Session(target, Sampling(max_tokens=8))
    session.history.record("an earlier question", "its answer")
    notices = []
    assert session.budget == 56
    assert session.prompt("word " * 100, notices.append) is None
    assert "shorten it" in notices[0] and "context holds 64" in notices[0]
    assert session.history.turns == [("an earlier question", "its answer")]  # the conversation survives
    ids = session.prompt("a short one", notices.append)
    assert ids == template.encode_prompt([user("an earlier question"), assistant("its answer"), user("a short one")])
    assert len(notices) == 1


# ---------------------------------------------------------------------- a real terminal


class Terminal:
    """``python -m finetune chat ARGS`` on a pseudo-terminal, read with the arrival time of each chunk."""

    def __init__(self, *args: str):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))  # wide: no line wrapping
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finetune", "chat", *args], stdin=slave, stdout=slave, stderr=slave,
            cwd=REPO, env=env, start_new_session=True,
        )
        os.close(slave)
        self.log = b""

    def read_until(self, marker: bytes, timeout: float = 300) -> list[tuple[float, bytes]]:
        """The chunks read until ``marker`` appears (after the bytes already consumed), timestamped."""
        chunks, seen, deadline = [], b"", time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {marker!r} within {timeout} s; screen:\n{self.screen()}")
            try:
                data = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                raise AssertionError(f"chat ended before {marker!r}; screen:\n{self.screen()}") from None
            chunks.append((time.monotonic(), data))
            seen += data
            self.log += data
        return chunks

    def say(self, line: str) -> str:
        """Type ``line`` and return what the screen shows until the next prompt, escapes removed."""
        os.write(self.master, line.encode() + b"\n")
        return text(self.read_until(b"you> "))

    def screen(self) -> str:
        return self.log.decode(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """End the chat if a failed test left it running, and release the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    """``terminal(*args)`` starts a chat on a pseudo-terminal; each is closed after the test."""
    opened: list[Terminal] = []

    def start(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]

    yield start
    for term in opened:
        term.close()


def text(chunks) -> str:
    return ANSI.sub(b"", b"".join(data for _, data in chunks)).decode(errors="replace").replace("\r\n", "\n")


def answer_of(screen: str, question: str) -> tuple[str, int]:
    """The answer line after the echoed question, and the prompt token count the stats line reports."""
    after = screen.split(question, 1)[1]
    lines = [line for line in after.split("\n") if line.strip()]
    return lines[0].strip(), int(STATS.search(after).group(1))


def test_chat_on_a_terminal_answers_keeps_history_resets_and_exits(quickstart_run, loaded_run, terminal):
    run, _ = quickstart_run
    template = loaded_run.template
    (q1, a1), (q2, _), (q3, _) = held_out(3)
    term = terminal(str(run), "--temperature", "0", "--max-tokens", "8")
    banner = text(term.read_until(b"you> "))
    assert "/reset" in banner and "adapter" in banner

    answer, prompt_tokens = answer_of(term.say(q1), q1)
    assert answer == a1  # a single held-out turn: the quickstart's reference answer
    assert prompt_tokens == len(template.encode_prompt([user(q1)]))

    answer2, prompt_tokens = answer_of(term.say(q2), q2)
    # the second prompt holds the first turn: <s>[INST] q1 [/INST] a1</s>[INST] q2 [/INST]
    second = [user(q1), assistant(a1), user(q2)]
    assert prompt_tokens == len(template.encode_prompt(second))
    assert answer2 == greedy(loaded_run, second) and answer2 in LABELS

    assert "unknown command /history" in term.say("/history") and "/exit" in term.screen()
    assert "conversation forgotten" in term.say("/reset")
    answer, prompt_tokens = answer_of(term.say(q3), q3)
    assert answer == greedy(loaded_run, [user(q3)]) and answer in LABELS
    assert prompt_tokens == len(template.encode_prompt([user(q3)]))

    os.write(term.master, b"/exit\n")
    assert term.wait() == 0
    assert "Traceback" not in term.screen()


def test_chat_streams_tokens_as_they_are_produced_and_ctrl_c_leaves(quickstart_run, terminal):
    run, _ = quickstart_run
    (q1, _), (q2, _) = held_out(2)
    # Near-uniform sampling: the fine-tuned model's single-word answers turn into many words.
    term = terminal(str(run), "--temperature", "5", "--top-p", "1", "--max-tokens", "40", "--seed", "3")
    term.read_until(b"you> ")
    os.write(term.master, q1.encode() + b"\n")
    chunks = term.read_until(b"you> ")
    screen = b"".join(data for _, data in chunks)
    start = screen.index(q1[-10:].encode()) + 10  # the answer starts after the echoed question ...
    start = screen.index(b"\n", start) + 1
    stats = screen.index(b"prompt tokens")  # ... and ends before the stats line
    offset, arrivals, stats_arrival = 0, [], None
    for arrived, data in chunks:
        end = offset + len(data)
        if end > start and offset < stats:
            arrivals.append(arrived)  # a read carrying answer text
        if stats_arrival is None and end > stats:
            stats_arrival = arrived
        offset = end
    stats_line = STATS.search(text(chunks))
    new_tokens, seconds = int(stats_line.group(2)), float(stats_line.group(3))
    assert new_tokens >= 20, text(chunks)
    # Printed all at once at the end, the answer would come in one read, right before the stats line;
    # streamed, its first words arrive early in the generation time the stats line reports.
    assert len(arrivals) >= 5, text(chunks)
    assert stats_arrival - min(arrivals) > 0.5 * seconds, (arrivals, stats_arrival, seconds)

    os.write(term.master, q2.encode() + b"\n")
    term.read_until(q2[-10:].encode())
    time.sleep(0.3)  # mid-answer (or back at the prompt on a fast machine): Ctrl-C leaves either way
    term.proc.send_signal(signal.SIGINT)
    assert term.wait() == 0
    assert "Traceback" not in term.screen()


# ---------------------------------------------------------------------- piped input


def test_piped_chat_prints_only_the_answers(quickstart_run, loaded_run):
    run, _ = quickstart_run
    (q1, a1), (q2, _) = held_out(2)
    a2 = greedy(loaded_run, [user(q1), assistant(a1), user(q2)])  # the history goes with the second question
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "chat", str(run), "--temperature", "0", "--max-tokens", "8"],
        input=f"{q1}\n/nope\n{q2}\n/exit\nnever read\n", cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{a1}\n\n{a2}\n"  # no prompt, no colours: the answers, blank-line separated
    assert "unknown command /nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_long_conversation_drops_its_oldest_turns_once_and_keeps_answering(loaded_run):
    assert loaded_run.context == 128  # the quickstart recipe's data.max_length
    rows = held_out(6)
    stdin = io.StringIO("".join(f"{q}\n" for q, _ in rows))  # ends without /exit: end of input leaves
    stdout, notices = io.StringIO(), io.StringIO()
    status = converse(loaded_run, None, Sampling(max_tokens=8, temperature=0), Console(file=notices, width=400),
                      stdin, stdout)
    assert status == 0
    answers = stdout.getvalue().rstrip("\n").split("\n\n")
    assert len(answers) == len(rows)
    (q1, a1), (q2, _) = rows[:2]
    assert answers[:2] == [a1, greedy(loaded_run, [user(q1), assistant(a1), user(q2)])]
    # The tiny model learned single turns only: deep in a conversation it may pick the wrong label,
    # but it still answers with one of the task's labels.
    assert set(answers) <= LABELS, answers
    assert notices.getvalue().count("dropped the oldest turns") == 1


def test_a_message_longer_than_the_context_is_refused_and_the_chat_goes_on(loaded_run):
    (q1, a1), = held_out(1)
    stdin = io.StringIO("too long " * 80 + f"\n{q1}\n/exit\n")
    stdout, notices = io.StringIO(), io.StringIO()
    assert converse(loaded_run, None, Sampling(max_tokens=8, temperature=0), Console(file=notices, width=400),
                    stdin, stdout) == 0
    assert stdout.getvalue() == f"{a1}\n"
    assert "shorten it" in notices.getvalue()
