"""A local GGUF chat model through llama-cpp-python, constrained to the turn's JSON schema.

What makes a turn fast on two CPU cores:
- KV-cache reuse: each turn's prompt (system prompt + conversation) is compared token by token
  with what the context already holds, and only the new tail is evaluated. `prefill` does the
  same ahead of time (while the caller still speaks) and yields to a waiting `generate`; given
  the turn's schema it evaluates the whole prompt `generate` would (generation prompt and say
  opening included), and the logits of its last token are kept, so a `generate` of exactly
  that prompt starts sampling without evaluating anything.
- The prompt ends with the opening of the say field (`{"say":"`), so the first generated
  tokens are words to speak; `on_say` gets them decoded as they come.
- Grammar check on the chosen token only: the grammar is applied to the whole vocabulary only
  when the model's preferred token is rejected (the output is still always grammatical).
One model per process: share one `LlamaBackend` between calls; a lock serialises its work.
"""

from __future__ import annotations

import bisect
import codecs
import copy
import ctypes
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agentd.dialog.cpu_share import ThreadGovernor
from agentd.dialog.jsonstream import SayStream
from agentd.dialog.schema import LlmError
from agentd.dialog.types import Cancel, ChatMessage, GenerationStats, JsonDict

log = logging.getLogger("agentd.llm")

SAY_OPENING = '{"say":"'  # compact, as the model writes JSON and as prompt.py stores replies
_SENTINEL = "\u2063\u2063agentd-prefill-cut\u2063\u2063"
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_GRAMMAR_CACHE_SIZE = 8
# Tokens per prefill step. A step is where a waiting generate can take over, so it stays
# near ~0.3 s; but llama.cpp's CPU matrix kernels are much faster per token from 16 tokens
# a batch on (2 cores, 1.5B q4_K, 1.8k context: 8 tokens 237 ms, 12 313 ms, 16 277 ms,
# tools/bench_dialog.py --batches), so a short tail (<= _PREFILL_ONE_STEP) goes in one step
# and longer ones in steps of 16; a long prompt (the shared prefix warmed at start-up) in
# steps of 64.
_PREFILL_BATCH = 16
_PREFILL_ONE_STEP = 20
_PREFILL_LONG_BATCH = 64


# ---- context budget ---------------------------------------------------------------------------


def fit_messages(
    messages: Sequence[ChatMessage],
    budget: int,
    count_tokens: Callable[[Sequence[ChatMessage]], int],
    *,
    block: int = 8,
    summary_chars: int = 480,
) -> list[ChatMessage]:
    """Drop the oldest turns so the prompt fits `budget` tokens.

    Leading system messages stay as they are (their KV cache stays valid). Turns are dropped
    in blocks of `block` messages so the cut point, and thus the cached prompt prefix, stays
    the same for several turns; a short system note keeps the gist of what was dropped. The
    last message is always kept.
    """
    messages = list(messages)
    if count_tokens(messages) <= budget:
        return messages
    head_len = 0
    while head_len < len(messages) and messages[head_len].role == "system":
        head_len += 1
    head, body = messages[:head_len], messages[head_len:]
    if not body:
        return messages
    drop = 0
    while True:
        drop = min(drop + block, len(body) - 1)
        fitted = head + [_summary(body[:drop], summary_chars)] + body[drop:]
        if count_tokens(fitted) <= budget or drop >= len(body) - 1:
            return fitted


def _summary(dropped: Sequence[ChatMessage], limit: int) -> ChatMessage:
    speaker = {"user": "caller", "assistant": "you", "tool": "tool", "system": "note"}
    lines: list[str] = []
    used = 0
    for message in reversed(dropped):  # the most recent dropped turns matter most
        text = " ".join(_spoken(message).split())
        line = f"{speaker[message.role]}: {text[:100]}"
        if used + len(line) > limit:
            break
        lines.append(line)
        used += len(line)
    lines.reverse()
    return ChatMessage(
        "system",
        "Earlier in this call (older turns shortened to save space):\n" + "\n".join(lines),
    )


def _spoken(message: ChatMessage) -> str:
    if message.role == "assistant":
        try:
            value = json.loads(message.content)
        except ValueError:
            return message.content
        if isinstance(value, dict) and isinstance(value.get("say"), str):
            return str(value["say"])
    return message.content


# ---- grammar -------------------------------------------------------------------------------

_CLASS_ESCAPES = {"d": "0-9", "w": "A-Za-z0-9_", "s": " \\t"}
_SAFE_PATTERN = re.compile(r"^\^([^\\]|\\[-.^$*+?()\[\]{}|/\\])*\$$")


def grammar_schema(schema: JsonDict, *, patterns: bool = True) -> JsonDict:
    """A copy of `schema` for llama-cpp-python's grammar converter.

    The converter only handles fully anchored patterns built from literals and character
    classes (it turns `\\d` into a literal "d"): class escapes are rewritten as classes, other
    patterns are left out of the grammar (parse_reply still enforces them)."""
    result = copy.deepcopy(schema)
    stack: list[Any] = [result]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            rewritten = _rewrite_pattern(pattern) if patterns else None
            if rewritten is None:
                del node["pattern"]
            else:
                node["pattern"] = rewritten
        stack.extend(v for k, v in node.items() if k not in ("const", "enum", "default"))
    return result


def _rewrite_pattern(pattern: str) -> str | None:
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in _CLASS_ESCAPES:
            chars = _CLASS_ESCAPES[pattern[i + 1]]
            out.append(chars if in_class else f"[{chars}]")
            i += 2
            continue
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        out.append(ch)
        i += 1
    rewritten = "".join(out)
    return rewritten if _SAFE_PATTERN.match(rewritten) else None


# ---- drafts from the prompt --------------------------------------------------------------------

# Up to this many guessed tokens are checked with each generated one (0: none). A reply that
# repeats a policy answer word for word then costs one batch per 5 tokens instead of 5 steps
# (2 cores, 1.5B, 1.8k context: 4 tokens in one batch 117 ms, one 49 ms); a wrong guess
# costs the batch, so a guess needs DRAFT_MATCH tokens of agreement first. Four dental
# answers (tools/bench_dialog.py --draft): whole reply 6.5 s -> 4.9 s with 4 guessed tokens
# (75 % right), 4.9 s with 6, 5.3 s with 8; replies identical.
DRAFT_TOKENS = 4
DRAFT_MATCH = 3


class _DraftLookup:
    """Guesses the next tokens of a reply: where the reply's last DRAFT_MATCH tokens occur
    in the prompt (latest occurrence first), the tokens that followed them there."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self._prompt = np.asarray(prompt, dtype=np.int64)

    def draft(self, reply: Sequence[int], limit: int) -> list[int]:
        n = DRAFT_MATCH
        prompt = self._prompt
        if limit <= 0 or len(reply) < n or len(prompt) <= n:
            return []
        tail = np.asarray(reply[-n:], dtype=np.int64)
        starts = np.flatnonzero(prompt[: len(prompt) - n] == tail[0])
        for start in starts[::-1]:
            if np.array_equal(prompt[start : start + n], tail):
                follow = prompt[start + n : start + n + limit]
                return [int(token) for token in follow]
        return []


# ---- token memory ---------------------------------------------------------------------------


class _TokenMemory:
    """The bytes of the last prompt (+ reply) and the exact tokens the model saw for them."""

    def __init__(self) -> None:
        self.data = b""
        self.tokens: list[int] = []
        self.ends: list[int] = []  # byte offset where each token's text ends

    def common(self, data: bytes) -> int:
        """Length of the common byte prefix of `data` and the remembered bytes."""
        low, high = 0, min(len(data), len(self.data))
        while low < high:  # binary search with C-speed slice compares
            middle = (low + high + 1) // 2
            if data[:middle] == self.data[:middle]:
                low = middle
            else:
                high = middle - 1
        return low

    def reusable(self, data: bytes) -> tuple[list[int], int]:
        """Tokens covering the longest common prefix of `data` that ends on a character
        boundary, and the byte offset where they end."""
        common = self.common(data)
        k = bisect.bisect_right(self.ends, common)
        while k > 0 and self.ends[k - 1] < len(data) and 0x80 <= data[self.ends[k - 1]] < 0xC0:
            k -= 1  # never cut inside a UTF-8 character
        return self.tokens[:k], (self.ends[k - 1] if k else 0)

    def remember(self, data: bytes, tokens: list[int], piece: Callable[..., bytes]) -> None:
        reused = 0
        while (
            reused < min(len(tokens), len(self.tokens)) and tokens[reused] == self.tokens[reused]
        ):
            reused += 1
        ends = self.ends[:reused]
        start = offset = ends[-1] if ends else 0
        pieces = []
        for token in tokens[reused:]:
            pieces.append(piece(token, special=True))
            offset += len(pieces[-1])
            ends.append(offset)
        if b"".join(pieces) != data[start:] or self.data[:start] != data[:start]:
            self.clear()  # a tokenizer whose pieces do not spell the text: no reuse
            return
        self.data, self.tokens, self.ends = data, list(tokens), ends

    def extend(self, tokens: list[int], piece: Callable[..., bytes]) -> None:
        offset = self.ends[-1] if self.ends else 0
        for token in tokens:
            chunk = piece(token, special=True)
            self.data += chunk
            offset += len(chunk)
            self.tokens.append(token)
            self.ends.append(offset)

    def clear(self) -> None:
        self.data, self.tokens, self.ends = b"", [], []

    def copy(self) -> _TokenMemory:
        twin = _TokenMemory()
        twin.data, twin.tokens, twin.ends = self.data, list(self.tokens), list(self.ends)
        return twin


# ---- conversations set aside -------------------------------------------------------------------

# Calls take turns on one model, and each call's prompt differs from the next call's right
# after the shared system prompt: without this, every turn of one call would evaluate its
# whole conversation again after another call's turn (200+ tokens by the fifth turn, ~4 s
# on 2 cores). Instead the context another conversation is about to overwrite is copied
# aside (its KV cells, ~28 KB a token for the 1.5B: ~40 ms for 2k tokens) and copied back
# (~6 ms) when its conversation returns. Up to HELD_CONTEXTS are kept (oldest dropped).
HELD_CONTEXTS = 4
# Worth keeping / bringing back only when it saves at least this many bytes of prompt
# (~40 tokens, ~0.7 s of evaluation): a caller's revised partial transcript is not.
HELD_MIN_BYTES = 160


@dataclass
class _Held:
    """A conversation's context set aside: what its KV cells hold and their saved state."""

    memory: _TokenMemory
    tokens: np.ndarray
    state: Any  # ctypes byte array from llama_state_seq_get_data
    size: int


# ---- the backend ------------------------------------------------------------------------------


class LlamaBackend:
    """`LlmBackend` over llama-cpp-python 0.3.x with streaming, grammar and KV-cache reuse."""

    name = "llama"

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 4096,
        threads: int = 2,
        seed: int = 42,
        temperature: float = 0.0,
        n_batch: int = 256,
        say_opening: bool = True,
        greedy_grammar_check: bool = True,
        draft_tokens: int = DRAFT_TOKENS,
        adapt_threads: bool = True,
        thread_governor: ThreadGovernor | None = None,
        verbose: bool = False,
    ) -> None:
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
            from llama_cpp.llama_grammar import json_schema_to_gbnf
        except ImportError as exc:  # the `llm` extra is not installed
            raise LlmError(f"llama-cpp-python is not installed ({exc}); pip install agentd[llm]")
        path = Path(model_path)
        if not path.is_file():
            raise LlmError(f"LLM model file not found: {path}")
        self._lib = llama_cpp
        self._to_gbnf = json_schema_to_gbnf
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                seed=seed,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise LlmError(f"cannot load LLM model {path}: {exc}") from None
        self.model_path = path
        # Fewer threads while other processes take cores: see agentd/dialog/cpu_share.py.
        self._threads = threads
        self._governor = thread_governor
        if thread_governor is None and adapt_threads and threads > 1:
            self._governor = ThreadGovernor(threads)
        self.n_ctx = n_ctx
        self.seed = seed
        self.temperature = temperature
        self.say_opening = say_opening
        self.greedy_grammar_check = greedy_grammar_check
        self.draft_tokens = max(0, draft_tokens)
        self.last_drafted = 0  # guessed tokens of the last reply, and how many were right
        self.last_accepted = 0
        self.last_stats: GenerationStats | None = None
        self.last_grammar_fallbacks = 0  # tokens of the last reply that needed the full mask
        self._memory = _TokenMemory()
        self._held: list[_Held] = []  # other conversations' contexts, oldest first
        self.context_switches = 0  # contexts brought back (for tests and benchmarks)
        self._logits_at = -1  # context length whose last token's logits are current
        self._lock = threading.RLock()
        self._waiting = 0  # generate calls waiting for the lock: prefill yields to them
        self._waiting_lock = threading.Lock()
        self._vocab = self._llm._model.vocab
        self._n_vocab = self._llm.n_vocab()
        self._samplers: OrderedDict[str, Any] = OrderedDict()  # grammar text -> sampler
        self._candidates = (llama_cpp.llama_token_data * self._n_vocab)()
        self._candidates_np = np.ctypeslib.as_array(self._candidates)
        self._candidates_np["id"] = np.arange(self._n_vocab, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()
        self._piece = ctypes.create_string_buffer(256)
        template = self._llm.metadata.get("tokenizer.chat_template") or _CHATML
        eos = self._token_text(self._llm.token_eos())
        bos = self._token_text(self._llm.token_bos())
        self._formatter = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        self._formatter_open = Jinja2ChatFormatter(
            template, eos_token=eos, bos_token=bos, add_generation_prompt=False
        )

    # ---- prompt --------------------------------------------------------------------------

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt text the model's chat template makes of `messages`."""
        formatter = self._formatter if add_generation_prompt else self._formatter_open
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        return str(formatter(messages=dicts).prompt)

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.tokenize(self.render(messages)))

    def fit(self, messages: Sequence[ChatMessage], max_tokens: int = 256) -> list[ChatMessage]:
        """`messages` shortened (oldest turns first) so prompt + reply fit the context."""
        budget = self.n_ctx - max_tokens - 16
        return fit_messages(messages, budget, self.count_tokens)

    def _prompt_tokens(
        self, messages: Sequence[ChatMessage], schema: JsonDict | None
    ) -> tuple[list[int], str, str]:
        opening = SAY_OPENING if schema is not None and self._opens_with_say(schema) else ""
        text = self.render(messages) + opening
        return self._tokenize_prompt(text), opening, text

    def _tokenize_prompt(self, text: str) -> list[int]:
        """Tokens for `text`, reusing the tokens the model last saw for a common prefix.

        A reply's own tokens are often not what the tokenizer makes of the same text; a
        prompt that repeats the reply would otherwise miss the KV cache from there on."""
        data = text.encode("utf-8")
        self._switch_context(data)
        reused, cut = self._memory.reusable(data)
        tokens = reused + self.tokenize(data[cut:].decode("utf-8"))
        self._memory.remember(data, tokens, self._token_bytes)
        return tokens

    def _opens_with_say(self, schema: JsonDict) -> bool:
        properties = schema.get("properties")
        return (
            self.say_opening
            and isinstance(properties, dict)
            and next(iter(properties), None) == "say"
            and properties["say"].get("type") == "string"
            and "say" in schema.get("required", [])
        )

    # ---- KV cache ------------------------------------------------------------------------

    def _switch_context(self, data: bytes) -> None:
        """Before a prompt of bytes `data` is evaluated: bring back the set-aside context
        that shares the most with it, or set the live one aside if `data` would overwrite
        a worthwhile part of it."""
        live = self._memory.common(data)
        shared = [(held.memory.common(data), held) for held in self._held]
        best = max(shared, key=lambda pair: pair[0], default=None)
        if best is not None and best[0] - live >= HELD_MIN_BYTES:
            self._held.remove(best[1])  # first: setting the live one aside may drop the oldest
            self._set_aside(live)
            self._bring_back(best[1])
        else:
            self._set_aside(live)

    def _set_aside(self, kept: int) -> None:
        """Copy the live context aside if more than HELD_MIN_BYTES of it are past byte
        `kept` (what the next prompt shares with it)."""
        memory = self._memory
        if len(memory.data) - kept < HELD_MIN_BYTES or self._llm.n_tokens == 0:
            return
        ctx = self._llm._ctx.ctx
        size = int(self._lib.llama_state_seq_get_size(ctx, 0))
        state = (ctypes.c_uint8 * size)()
        written = int(self._lib.llama_state_seq_get_data(ctx, state, size, 0))
        if written <= 0:
            return
        # An older snapshot of the same conversation is superseded by this one.
        self._held = [held for held in self._held if not memory.data.startswith(held.memory.data)]
        tokens = np.array(self._llm.input_ids[: self._llm.n_tokens], copy=True)
        self._held.append(_Held(memory, tokens, state, written))
        del self._held[:-HELD_CONTEXTS]
        self._memory = memory.copy()  # the live one goes on changing; the held one must not

    def _bring_back(self, held: _Held) -> None:
        ctx = self._llm._ctx.ctx
        self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(ctx), 0, -1, -1)
        self._logits_at = -1
        if int(self._lib.llama_state_seq_set_data(ctx, held.state, held.size, 0)) <= 0:
            self._llm.n_tokens = 0  # not restored: the prompt is evaluated from scratch
            return
        self._llm.input_ids[: len(held.tokens)] = held.tokens
        self._llm.n_tokens = len(held.tokens)
        self._memory = held.memory
        self.context_switches += 1

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        held = self._llm.input_ids[: self._llm.n_tokens]
        n = min(len(held), len(tokens))
        if n == 0:
            return 0
        diff = np.nonzero(held[:n] != np.asarray(tokens[:n], dtype=held.dtype))[0]
        return int(diff[0]) if diff.size else n

    def _evaluate(self, tokens: Sequence[int], *, need_logits: bool) -> int:
        """Make the context hold exactly `tokens`; return how many were already cached."""
        cached = self._cached_prefix(tokens)
        if need_logits and cached == len(tokens):
            if self._llm.n_tokens == cached == self._logits_at:
                return cached  # a prefill of exactly this prompt left its logits current
            cached -= 1  # re-evaluate the last token to get fresh logits
        self._llm.n_tokens = cached  # eval() drops the KV entries after this point
        self._eval(tokens[cached:])
        return cached

    @property
    def threads_now(self) -> int:
        """The CPU threads the context computes with now."""
        return self._threads if self._governor is None else self._governor.current

    @property
    def others_busy_cores(self) -> float | None:
        """Other processes' CPU use over the last sampling window (None: not adapting)."""
        return None if self._governor is None else self._governor.others_busy

    def _fit_threads(self) -> None:
        """Before computing: the thread count the CPU's other work leaves room for."""
        if self._governor is None:
            return
        before = self._governor.current
        wanted = self._governor.threads()
        if wanted != before:
            self._llm._ctx.set_n_threads(wanted, wanted)
            log.info("LLM now on %d thread(s): other processes use %.1f of %d cores",
                     wanted, self._governor.others_busy, self._governor.cores)

    def _eval(self, tokens: Sequence[int]) -> None:
        if not tokens:
            return
        self._fit_threads()
        self._logits_at = -1
        try:
            self._llm.eval(list(tokens))
        except RuntimeError as exc:
            raise LlmError(f"llama.cpp could not evaluate the prompt: {exc}") from None
        self._logits_at = self._llm.n_tokens

    def _eval_rows(self, tokens: Sequence[int]) -> list[np.ndarray]:
        """Evaluate `tokens` after the context in one batch; the logits after each (copies:
        the next evaluation overwrites them)."""
        self._fit_threads()
        model = self._llm
        model._ctx.kv_cache_seq_rm(-1, model.n_tokens, -1)
        n_past = model.n_tokens
        self._logits_at = -1
        model._batch.set_batch(batch=list(tokens), n_past=n_past, logits_all=True)
        try:
            model._ctx.decode(model._batch)
        except RuntimeError as exc:
            raise LlmError(f"llama.cpp could not evaluate the reply: {exc}") from None
        model.input_ids[n_past : n_past + len(tokens)] = tokens
        model.n_tokens = n_past + len(tokens)
        self._logits_at = model.n_tokens
        ctx = model._ctx.ctx
        return [
            np.ctypeslib.as_array(
                self._lib.llama_get_logits_ith(ctx, i), shape=(self._n_vocab,)
            ).copy()
            for i in range(len(tokens))
        ]

    def prefill(
        self,
        messages: list[ChatMessage],
        *,
        stop: Callable[[], bool] | None = None,
        schema: JsonDict | None = None,
    ) -> None:
        """Evaluate the prompt of `messages` into the KV cache ahead of a `generate`.

        Without `schema` the last caller (or tool) message stays open: more words may follow.
        With the turn's `schema` the prompt is exactly what `generate(messages, schema)` will
        evaluate (generation prompt and say opening included), so that generate samples at
        once. Stops early when a `generate` is waiting (or `stop()` is true: a caller's gate
        has a waiter), so it never delays a reply by more than one small batch."""
        if not messages:
            return
        with self._lock:
            last = messages[-1]
            if schema is not None:
                tokens = self._prompt_tokens(messages, schema)[0]
            elif last.role in ("user", "tool"):
                marked = [*messages[:-1], ChatMessage(last.role, last.content + _SENTINEL)]
                text = self.render(marked, add_generation_prompt=False).split(_SENTINEL)[0]
                tokens = self._tokenize_prompt(text)
            else:
                tokens = self._tokenize_prompt(self.render(messages, add_generation_prompt=True))
            if len(tokens) >= self.n_ctx:
                return
            done = cached = self._cached_prefix(tokens)
            started = time.perf_counter()
            while done < len(tokens) and not self._waiting and not (stop and stop()):
                left = len(tokens) - done
                if left <= _PREFILL_ONE_STEP:
                    step = len(tokens)
                else:
                    step = done + min(left, _PREFILL_BATCH if left <= 64 else _PREFILL_LONG_BATCH)
                self._llm.n_tokens = done
                self._eval(tokens[done:step])
                done = step
            log.debug("prefill%s: %d tokens, %d cached, %d evaluated in %.0f ms%s",
                      " to the reply" if schema is not None else "", len(tokens), cached,
                      done - cached, (time.perf_counter() - started) * 1000.0,
                      "" if done == len(tokens) else " (stopped)")

    # ---- grammar -------------------------------------------------------------------------

    def _grammar(self, schema: JsonDict) -> Any:
        """A reset grammar sampler for `schema` (cached: parsing a grammar takes a while)."""
        key = json.dumps(schema, sort_keys=False)
        sampler = self._samplers.get(key)
        if sampler is None:
            sampler = self._build_grammar(grammar_schema(schema))
            if sampler is None:  # some pattern the converter mangles: validation still checks
                sampler = self._build_grammar(grammar_schema(schema, patterns=False))
            if sampler is None:
                raise LlmError("cannot build a llama.cpp grammar from the schema")
            self._samplers[key] = sampler
            while len(self._samplers) > _GRAMMAR_CACHE_SIZE:
                _, old = self._samplers.popitem(last=False)
                self._lib.llama_sampler_free(old)
        else:
            self._samplers.move_to_end(key)
            self._lib.llama_sampler_reset(sampler)
        return sampler

    def _build_grammar(self, schema: JsonDict) -> Any:
        try:
            gbnf = self._to_gbnf(json.dumps(schema))
        except Exception:  # the converter raises plain exceptions and asserts
            return None
        sampler = self._lib.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        return sampler or None

    def _grammar_allows(self, grammar: Any, token: int, logit: float) -> bool:
        self._one[0].id = token
        self._one[0].logit = logit
        self._one[0].p = 0.0
        array = self._lib.llama_token_data_array(self._one, 1, -1, False)
        self._lib.llama_sampler_apply(grammar, ctypes.byref(array))
        return bool(np.isfinite(self._one[0].logit))

    # ---- sampling ------------------------------------------------------------------------

    def _logits(self) -> np.ndarray:
        pointer = self._lib.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _pick(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        if self.temperature <= 0.0:
            return int(np.argmax(logits))
        finite = np.isfinite(logits)
        scaled = np.where(finite, logits / self.temperature, -np.inf)
        scaled -= scaled[finite].max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        return int(rng.choice(self._n_vocab, p=probs))

    def _sample(self, grammar: Any, rng: np.random.Generator,
                logits: np.ndarray | None = None) -> int:
        logits = self._logits() if logits is None else logits
        if self.greedy_grammar_check:
            token = self._pick(logits, rng)
            if self._grammar_allows(grammar, token, float(logits[token])):
                return token
        self.last_grammar_fallbacks += 1
        self._candidates_np["logit"] = logits
        array = self._lib.llama_token_data_array(self._candidates, self._n_vocab, -1, False)
        self._lib.llama_sampler_apply(grammar, ctypes.byref(array))
        allowed = self._candidates_np["logit"].copy()
        if not np.isfinite(allowed).any():
            raise LlmError("the grammar allows no token: the output cannot be completed")
        return self._pick(allowed, rng)

    def _token_text(self, token: int) -> str:
        return self._token_bytes(token, special=True).decode("utf-8", errors="replace")

    def _token_bytes(self, token: int, *, special: bool = False) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, special)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
            return buffer.raw[:n]
        return self._piece.raw[:n]

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self,
        messages: list[ChatMessage],
        schema: JsonDict,
        *,
        max_tokens: int = 256,
        on_say: Callable[[str], None] | None = None,
        cancel: Cancel | None = None,
    ) -> tuple[str, GenerationStats]:
        """The model's JSON reply to `messages`, following `schema`.

        `on_say` receives the say text as it is decoded. A cancelled generation stops at the
        next token and returns the text so far (incomplete JSON): check `cancel.cancelled`.
        """
        started = time.perf_counter()
        with self._waiting_lock:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            return self._generate(messages, schema, max_tokens, on_say, cancel, started)
        finally:
            self._lock.release()

    def _generate(
        self,
        messages: list[ChatMessage],
        schema: JsonDict,
        max_tokens: int,
        on_say: Callable[[str], None] | None,
        cancel: Cancel | None,
        started: float,
    ) -> tuple[str, GenerationStats]:
        grammar = self._grammar(schema)
        messages = self.fit(messages, max_tokens)
        tokens, opening, _ = self._prompt_tokens(messages, schema)
        if len(tokens) + max_tokens > self.n_ctx:
            raise LlmError(
                f"prompt of {len(tokens)} tokens + {max_tokens} to generate exceeds the "
                f"context of {self.n_ctx}"
            )
        stream = SayStream()
        if opening:
            for token in self.tokenize(opening):
                if not self._grammar_allows(grammar, token, 0.0):
                    raise LlmError("the schema does not start with the say field")
                self._lib.llama_sampler_accept(grammar, token)
            stream.feed(opening)
        if cancel is not None and cancel.cancelled:
            return opening, self._stats(len(tokens), 0, 0, started, None)
        cached = self._evaluate(tokens, need_logits=True)
        self.last_grammar_fallbacks = 0
        self.last_drafted = self.last_accepted = 0
        reply_tokens: list[int] = []
        rng = np.random.default_rng(self.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = [opening]
        first_token_at: float | None = None
        generated = 0
        lookup = _DraftLookup(tokens) if self.draft_tokens > 0 else None

        def take(token: int) -> bool:
            """Add a sampled token to the reply; True when the reply is finished."""
            nonlocal generated, first_token_at
            if first_token_at is None:
                first_token_at = time.perf_counter()
            generated += 1
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                return True
            self._lib.llama_sampler_accept(grammar, token)
            reply_tokens.append(token)
            piece = decoder.decode(self._token_bytes(token))
            text.append(piece)
            spoken = stream.feed(piece)
            if spoken and on_say is not None:
                on_say(spoken)
            return stream.complete

        token = -1
        if max_tokens > 0 and not (cancel is not None and cancel.cancelled):
            token = self._sample(grammar, rng)
            if take(token):
                token = -1
        while token >= 0 and generated < max_tokens:
            if cancel is not None and cancel.cancelled:
                break
            # Evaluate the token just taken, plus a guess at the tokens after it (the reply
            # often repeats the prompt: a policy answer, the JSON tail of earlier replies).
            # One batch of k tokens costs far less than k single steps on a CPU, and each
            # guessed token is kept only if it is what would have been sampled anyway.
            draft: list[int] = []
            if lookup is not None:
                room = min(max_tokens - generated, self.n_ctx - self._llm.n_tokens - 2)
                draft = lookup.draft(reply_tokens, min(self.draft_tokens, room))
            rows = self._eval_rows([token, *draft])
            base = self._llm.n_tokens - len(draft) - 1
            self.last_drafted += len(draft)
            token = -1
            for i, row in enumerate(rows):
                sampled = self._sample(grammar, rng, row)
                if i < len(draft) and sampled == draft[i]:
                    self.last_accepted += 1
                    if take(sampled) or generated >= max_tokens:
                        self._llm.n_tokens = base + i + 2
                        break
                    continue
                self._llm.n_tokens = base + i + 1  # the guesses from here on were wrong
                if not take(sampled):
                    token = sampled
                break
        self._logits_at = -1  # a guessed batch leaves logits of tokens no longer held
        text.append(decoder.decode(b"", final=True))
        reply = "".join(text)
        self._memory.extend(reply_tokens, self._token_bytes)
        stats = self._stats(len(tokens), cached, generated, started, first_token_at)
        self.last_stats = stats
        log.debug("generate: %d prompt tokens, %d cached, first token %.0f ms, %d tokens in "
                  "%.0f ms (%d of %d guessed tokens right)", stats.prompt_tokens,
                  stats.cached_tokens, stats.first_token_ms, generated, stats.total_ms,
                  self.last_accepted, self.last_drafted)
        return reply, stats

    @staticmethod
    def _stats(
        prompt: int, cached: int, generated: int, started: float, first_at: float | None
    ) -> GenerationStats:
        now = time.perf_counter()
        return GenerationStats(
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=generated,
            first_token_ms=((first_at or now) - started) * 1000.0,
            total_ms=(now - started) * 1000.0,
        )

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            while self._samplers:
                _, sampler = self._samplers.popitem()
                self._lib.llama_sampler_free(sampler)
            self._llm.close()
