"""The built-in task ("marked words"): a toy language with an exact likelihood.

It exists to measure few-step decoding, so it is built to have the three properties the
measurement needs:

1. Many valid answers per prompt (multimodal): thousands per word.
2. Dependencies inside a block that independent per-position sampling breaks: each
   word holds exactly one marker in its first two positions, so sampling those two
   positions independently from their marginals gives two markers or none.
3. A one-shot argmax that is wrong: the marker is the most likely token at *both* of
   the first two positions, so greedy one-step-per-block decoding writes it twice.
   (DDO's "fake" answers are the reference's one-shot argmax; where those are valid,
   DDO pushes good answers down.)

The rules are positional and copy-like, so a ~1M-parameter masked-diffusion model
learns them in minutes on a CPU.

Rules, for a prompt of n category names `c_1 .. c_n` (e.g. `c3 c1 c5`):
- The response is n words of `word_length` tokens (one word per sampler block), then
  `<eos>`; the model pads the rest of the `max_new_tokens` with `<eos>`.
- Word i belongs to category c = c_i, with marker `M<c>` and alphabet A_c (a symbols
  drawn from a shared pool, so alphabets overlap). Its first two tokens are
  (marker, s) with probability 1 - q or (s, marker) with probability q, s uniform in
  A_c; every later token is uniform in A_c, independently.

Everything after the first `<eos>` is ignored (samplers write padding there), so the
task's distribution is over the tokens up to and including the first `<eos>`.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from t3d.dllm.errors import UserError
from t3d.dllm.tokenizer import EOS, MASK, PAD, SPECIAL_TOKENS

SPLITS = ("train", "val", "test")
FAULTS = ("length", "no marker", "two markers", "foreign token")
"""What `BuiltinTask.faults` names: the response's shape, or a word's marker pair or other tokens."""


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """Shape of the built-in task. The defaults are what the shipped teacher learned."""

    num_categories: int = 8
    """K: categories a prompt can name; each has its own marker."""
    alphabet_size: int = 8
    """a: symbols in each category's alphabet."""
    pool_size: int = 16
    """Symbols shared by all alphabets (alphabets overlap when K * a > pool_size)."""
    min_words: int = 2
    """Fewest category names in a prompt (= words in its response)."""
    max_words: int = 3
    """Most category names in a prompt."""
    word_length: int = 4
    """Tokens per word; equal to the sampler's block size so one word is one block."""
    marker_second_prob: float = 0.2
    """q: probability that the marker is a word's second token rather than its first."""
    max_new_tokens: int = 16
    """Response length the model decodes (words, `<eos>`, `<eos>` padding)."""
    val_fraction: float = 0.125
    """Share of the prompts of each length held out for validation."""
    test_fraction: float = 0.125
    """Share of the prompts of each length held out for testing."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_categories <= 26:
            raise ValueError(f"num_categories must be in [1, 26], got {self.num_categories}")
        if not 1 <= self.alphabet_size <= self.pool_size <= 26:
            raise ValueError("need 1 <= alphabet_size <= pool_size <= 26")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("need 1 <= min_words <= max_words")
        if self.word_length < 2:
            raise ValueError(f"word_length must be >= 2 (the marker pair), got {self.word_length}")
        if self.max_words * self.word_length >= self.max_new_tokens:
            raise ValueError("max_new_tokens must leave room for the words and an <eos>")
        if not 0.0 < self.marker_second_prob < 1.0:
            raise ValueError(f"marker_second_prob must be in (0, 1), got {self.marker_second_prob}")
        if not (0.0 <= self.val_fraction < 1 and 0.0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 and leave prompts for training")


@dataclass(frozen=True)
class _Word:
    """One category's word rule, in token ids."""

    marker: int
    alphabet: frozenset[int]


class BuiltinTask:
    """Prompts, exact validity, exact likelihood and a true sampler for the built-in task.

    Prompts and responses are lists of token ids of the built-in tokenizer (specials at
    ids 0..3, then category names, markers, symbols); `encode` / `decode` convert text.
    Everything derives deterministically from `seed` and `config`.
    """

    def __init__(self, seed: int = 0, config: TaskConfig | None = None) -> None:
        self.seed = seed
        self.config = config or TaskConfig()
        cfg = self.config
        self.category_words = [f"c{c}" for c in range(cfg.num_categories)]
        self.marker_words = [f"M{c}" for c in range(cfg.num_categories)]
        self.symbol_words = [chr(ord("a") + s) for s in range(cfg.pool_size)]
        self.words = self.category_words + self.marker_words + self.symbol_words
        self.vocabulary = list(SPECIAL_TOKENS) + self.words
        self._ids = {word: index for index, word in enumerate(self.vocabulary)}
        self.pad_id, self.mask_id, self.eos_id = self._ids[PAD], self._ids[MASK], self._ids[EOS]
        self.alphabets = self._draw_alphabets()  # (K, a) token ids
        self.marker_ids = np.array([self._ids[w] for w in self.marker_words])  # (K,)
        self._rules = [_Word(int(m), frozenset(int(s) for s in a)) for m, a in zip(self.marker_ids, self.alphabets)]
        self._category_of = {self._ids[w]: c for c, w in enumerate(self.category_words)}
        self._splits = self._make_splits()

    # ----- construction -------------------------------------------------------------

    def _draw_alphabets(self) -> np.ndarray:
        """K distinct alphabets of a symbols from the pool, fixed by the seed. (K, a)"""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 0])
        first_symbol = len(SPECIAL_TOKENS) + 2 * cfg.num_categories
        chosen: list[tuple[int, ...]] = []
        while len(chosen) < cfg.num_categories:
            pick = tuple(sorted(rng.choice(cfg.pool_size, size=cfg.alphabet_size, replace=False).tolist()))
            distinct_possible = math.comb(cfg.pool_size, cfg.alphabet_size) >= cfg.num_categories
            if pick not in chosen or not distinct_possible:
                chosen.append(pick)
        return np.array(chosen, dtype=np.int64) + first_symbol

    def _make_splits(self) -> dict[str, list[tuple[int, ...]]]:
        """Every prompt (ordered category tuple) in exactly one split, stratified by length."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 1])
        splits: dict[str, list[tuple[int, ...]]] = {name: [] for name in SPLITS}
        for n in range(cfg.min_words, cfg.max_words + 1):
            prompts = list(itertools.product(range(cfg.num_categories), repeat=n))
            order = rng.permutation(len(prompts))
            n_test = round(cfg.test_fraction * len(prompts))
            n_val = round(cfg.val_fraction * len(prompts))
            splits["test"] += [prompts[i] for i in order[:n_test]]
            splits["val"] += [prompts[i] for i in order[n_test : n_test + n_val]]
            splits["train"] += [prompts[i] for i in order[n_test + n_val :]]
        return splits

    # ----- text <-> ids -----------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated words -> token ids (the built-in tokenizer's ids)."""
        try:
            return [self._ids[word] for word in text.split()]
        except KeyError as err:
            raise UserError(f"unknown word {err.args[0]!r} for the built-in task") from None

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocabulary[int(i)] for i in ids)

    def tokenizer(self):
        """The transformers tokenizer with exactly these ids (saved beside the teacher)."""
        from t3d.dllm.tokenizer import build_tokenizer

        return build_tokenizer(self.words)

    # ----- prompts ------------------------------------------------------------------

    def prompts(self, split: str) -> list[list[int]]:
        """Prompt token ids of a split (`train` / `val` / `test`), in a fixed order."""
        if split not in self._splits:
            raise UserError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return [self.prompt_ids(cats) for cats in self._splits[split]]

    def prompt_ids(self, categories: Sequence[int]) -> list[int]:
        return [self._ids[self.category_words[c]] for c in categories]

    def categories(self, prompt: Sequence[int]) -> list[int]:
        """Category index of each prompt token; a prompt the task cannot answer is an error."""
        cfg = self.config
        try:
            cats = [self._category_of[int(t)] for t in prompt]
        except KeyError:
            raise UserError(f"not a built-in task prompt: {self.decode(prompt)!r}") from None
        if not cfg.min_words <= len(cats) <= cfg.max_words:
            raise UserError(f"a built-in task prompt names {cfg.min_words}-{cfg.max_words} categories, got {len(cats)}")
        return cats

    # ----- the true distribution ----------------------------------------------------

    def content(self, response: Sequence[int]) -> tuple[int, ...] | None:
        """The tokens before the first `<eos>`, or None when there is no `<eos>`."""
        ids = [int(t) for t in response]
        if self.eos_id not in ids:
            return None
        return tuple(ids[: ids.index(self.eos_id)])

    def _word_logprob(self, rule: _Word, word: Sequence[int]) -> float:
        """log p(word | category); -inf when the word breaks the rule."""
        cfg = self.config
        a, q = cfg.alphabet_size, cfg.marker_second_prob
        alphabet = rule.alphabet
        if any(t not in alphabet for t in word[2:]):
            return -math.inf
        free = (cfg.word_length - 1) * math.log(1.0 / a)  # the marker's partner and the tail
        if word[0] == rule.marker and word[1] in alphabet:
            return math.log(1.0 - q) + free
        if word[0] in alphabet and word[1] == rule.marker:
            return math.log(q) + free
        return -math.inf

    def log_likelihood(self, prompt: Sequence[int], response: Sequence[int]) -> float:
        """Exact log-probability of the response under the task; -inf when invalid."""
        cats = self.categories(prompt)
        body = self.content(response)
        w = self.config.word_length
        if body is None or len(body) != w * len(cats):
            return -math.inf
        return sum(self._word_logprob(self._rules[c], body[i * w : (i + 1) * w]) for i, c in enumerate(cats))

    def is_valid(self, prompt: Sequence[int], response: Sequence[int]) -> bool:
        return self.log_likelihood(prompt, response) > -math.inf

    def faults(self, prompt: Sequence[int], response: Sequence[int]) -> list[str]:
        """Why a response is invalid, one of `FAULTS` per faulty word (or one for its shape); [] when valid.

        A word's fault is the first that applies: `two markers` or `no marker` in its first
        two positions, else `foreign token` (a token outside its alphabet anywhere else).
        """
        cats = self.categories(prompt)
        body = self.content(response)
        w = self.config.word_length
        if body is None or len(body) != w * len(cats):
            return ["length"]
        found = []
        for i, c in enumerate(cats):
            rule, word = self._rules[c], body[i * w : (i + 1) * w]
            markers = [t == rule.marker for t in word[:2]]
            if all(markers):
                found.append("two markers")
            elif not any(markers):
                found.append("no marker")
            else:
                partner = word[1] if markers[0] else word[0]
                if any(t not in rule.alphabet for t in (partner, *word[2:])):
                    found.append("foreign token")
        return found

    def canonical(self, body: Sequence[int]) -> list[int]:
        """Words + `<eos>` padding to max_new_tokens: the form the teacher is trained on."""
        return list(body) + [self.eos_id] * (self.config.max_new_tokens - len(body))

    def enumerate_valid(self, prompt: Sequence[int], limit: int = 1_000_000) -> Iterator[list[int]]:
        """Every valid response (canonical form); refuses prompts with more than `limit`."""
        cats = self.categories(prompt)
        per_category = [list(self._valid_words(self._rules[c])) for c in cats]
        total = math.prod(len(words) for words in per_category)
        if total > limit:
            raise ValueError(f"{total} valid responses exceed limit={limit}: use a smaller TaskConfig")
        for words in itertools.product(*per_category):
            yield self.canonical([t for word in words for t in word])

    def _valid_words(self, rule: _Word) -> Iterator[tuple[int, ...]]:
        tail_len = self.config.word_length - 2
        alphabet = sorted(rule.alphabet)
        for s in alphabet:
            for tail in itertools.product(alphabet, repeat=tail_len):
                yield (rule.marker, s, *tail)
                yield (s, rule.marker, *tail)

    def sample(self, prompt: Sequence[int], rng: np.random.Generator) -> list[int]:
        """One response from the true distribution (canonical form)."""
        return self.sample_batch([prompt], rng)[0].tolist()

    def sample_batch(self, prompts: Sequence[Sequence[int]], rng: np.random.Generator) -> np.ndarray:
        """True-distribution responses for many prompts at once, canonical form. (N, L) int64"""
        cfg = self.config
        n, words, w = len(prompts), cfg.max_words, cfg.word_length
        cats = np.zeros((n, words), dtype=np.int64)
        present = np.zeros((n, words), dtype=bool)
        for row, prompt in enumerate(prompts):
            c = self.categories(prompt)
            cats[row, : len(c)], present[row, : len(c)] = c, True
        draws = rng.integers(cfg.alphabet_size, size=(n, words, w - 1))  # (N, W, w-1) symbol indices
        symbols = np.take_along_axis(self.alphabets[cats], draws, axis=2)  # (N, W, w-1) token ids
        marker = self.marker_ids[cats]  # (N, W)
        second = rng.random((n, words)) < cfg.marker_second_prob  # (N, W)
        body = np.empty((n, words, w), dtype=np.int64)
        body[..., 0] = np.where(second, symbols[..., 0], marker)
        body[..., 1] = np.where(second, marker, symbols[..., 0])
        body[..., 2:] = symbols[..., 1:]
        body[~present] = self.eos_id
        out = np.full((n, cfg.max_new_tokens), self.eos_id, dtype=np.int64)
        out[:, : words * w] = body.reshape(n, -1)
        return out

    # ----- exact summaries of the true distribution ---------------------------------

    def word_classes(self, prompt: Sequence[int]) -> list[tuple[int, float]]:
        """(number of responses, probability of each) for the n + 1 equiprobable classes.

        A response's probability depends only on how many of its words put the marker
        second (k), so its distribution has n + 1 levels; this makes the expected
        number of distinct samples exact and cheap.
        """
        cfg = self.config
        n = len(self.categories(prompt))
        a, q = cfg.alphabet_size, cfg.marker_second_prob
        per_word = a ** (cfg.word_length - 1)  # words of each marker placement
        return [
            (math.comb(n, k) * per_word**n, (q**k) * ((1 - q) ** (n - k)) / per_word**n) for k in range(n + 1)
        ]

    def expected_distinct(self, prompt: Sequence[int], num_samples: int) -> float:
        """E[distinct responses among num_samples true samples] = sum_x 1 - (1 - p_x)^N, exactly."""
        return sum(count * -math.expm1(num_samples * math.log1p(-p)) for count, p in self.word_classes(prompt))

    def entropy(self, prompt: Sequence[int]) -> float:
        """Entropy (nats) of the true response distribution."""
        return -sum(count * p * math.log(p) for count, p in self.word_classes(prompt))

    def position_marginals(self, prompt: Sequence[int]) -> list[dict[int, float]]:
        """True distribution of the token at each response position up to the `<eos>`."""
        cfg = self.config
        q, a = cfg.marker_second_prob, cfg.alphabet_size
        out: list[dict[int, float]] = []
        for c in self.categories(prompt):
            rule = self._rules[c]
            alphabet = sorted(rule.alphabet)
            first = {s: q / a for s in alphabet} | {rule.marker: 1 - q}
            second = {s: (1 - q) / a for s in alphabet} | {rule.marker: q}
            tail = {s: 1 / a for s in alphabet}
            out += [first, second] + [tail] * (cfg.word_length - 2)
        return out + [{self.eos_id: 1.0}]

    def describe(self) -> str:
        """The task's rules and alphabets in words (for model cards and `--help`)."""
        cfg = self.config
        lines = [
            f"marked words (seed {self.seed}): K={cfg.num_categories} categories, alphabets of a={cfg.alphabet_size} "
            f"from a pool of {cfg.pool_size}, {cfg.min_words}-{cfg.max_words} words of {cfg.word_length} tokens, "
            f"marker second with q={cfg.marker_second_prob}"
        ]
        for c, rule in enumerate(self._rules):
            lines.append(f"  c{c}: marker {self.vocabulary[rule.marker]}, alphabet {self.decode(sorted(rule.alphabet))}")
        return "\n".join(lines)


# ----- diversity measures (plain functions, for eval) --------------------------------


def _key(task: BuiltinTask, response: Sequence[int]) -> tuple[int, ...]:
    """Identity of a response: its tokens up to the first `<eos>` (all of them if none)."""
    body = task.content(response)
    return tuple(int(t) for t in response) if body is None else body


def distinct_responses(task: BuiltinTask, responses: Sequence[Sequence[int]]) -> int:
    """Number of different responses (compared up to the first `<eos>`)."""
    return len({_key(task, r) for r in responses})


def empirical_entropy(task: BuiltinTask, responses: Sequence[Sequence[int]]) -> float:
    """Entropy (nats) of the empirical distribution of the responses; log N when all differ."""
    counts = np.array(list(Counter(_key(task, r) for r in responses).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def marker_first_rate(task: BuiltinTask, prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> float:
    """Share of words with their marker first, among words with exactly one marker in
    the first two positions; the truth is 1 - q. NaN when no word qualifies."""
    w = task.config.word_length
    cats = task.categories(prompt)
    first = total = 0
    for response in responses:
        for i, c in enumerate(cats[: len(response) // w]):
            m = task.marker_ids[c]
            a, b = int(response[i * w]), int(response[i * w + 1])
            if (a == m) != (b == m):
                first += a == m
                total += 1
    return first / total if total else math.nan


def positional_tv(task: BuiltinTask, prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> float:
    """Mean over response positions (through the `<eos>`) of the total-variation distance
    between the empirical token distribution at that position and the true marginal."""
    marginals = task.position_marginals(prompt)
    width = len(marginals)
    tokens = np.full((len(responses), width), -1, dtype=np.int64)  # (N, P); -1 where a response is short
    for row, response in enumerate(responses):
        head = [int(t) for t in response][:width]
        tokens[row, : len(head)] = head
    distances = []
    for pos, truth in enumerate(marginals):
        counts = Counter(tokens[:, pos].tolist())
        support = set(counts) | set(truth)
        distances.append(0.5 * sum(abs(counts.get(t, 0) / len(tokens) - truth.get(t, 0.0)) for t in support))
    return float(np.mean(distances))


@dataclass(frozen=True, kw_only=True)
class DiversityReport:
    """Diversity of N sampled responses to one prompt, next to the truth."""

    samples: int
    """N: responses measured."""
    valid_rate: float
    """Share of them that are valid."""
    distinct: int
    """Different responses among them."""
    expected_distinct: float
    """E[distinct] for N samples of the true distribution (exact)."""
    distinct_ratio: float
    """distinct / expected_distinct: 1 matches the truth, below 1 is mode collapse."""
    entropy: float
    """Entropy (nats) of the empirical distribution."""
    marker_first_rate: float
    """Share of words with the marker first; the truth is 1 - q."""
    positional_tv: float
    """Mean per-position total-variation distance from the true marginals (0 is perfect)."""
    positional_tv_baseline: float
    """The same distance for N true samples (seeded): what sampling noise alone gives at this N."""
    extra: dict[str, float] = field(default_factory=dict)
    """Room for callers' own numbers."""


def diversity_report(
    task: BuiltinTask, prompt: Sequence[int], responses: Sequence[Sequence[int]], seed: int = 0
) -> DiversityReport:
    """Every diversity measure of one prompt's samples, against the task's true distribution.

    Empirical distances shrink with N, so the report carries the distance that N true
    samples (drawn with `seed`) reach: compare the two, or reports at the same N.
    """
    n = len(responses)
    truth = task.sample_batch([prompt] * n, np.random.default_rng(seed))
    expected = task.expected_distinct(prompt, n)
    distinct = distinct_responses(task, responses)
    return DiversityReport(
        samples=n,
        valid_rate=sum(task.is_valid(prompt, r) for r in responses) / n,
        distinct=distinct,
        expected_distinct=expected,
        distinct_ratio=distinct / expected,
        entropy=empirical_entropy(task, responses),
        marker_first_rate=float(marker_first_rate(task, prompt, responses)),
        positional_tv=positional_tv(task, prompt, responses),
        positional_tv_baseline=positional_tv(task, prompt, truth.tolist()),
    )


def mean_report(reports: Sequence[DiversityReport]) -> dict[str, float]:
    """Average of each numeric field over prompts (NaNs skipped)."""
    names = [
        "samples", "valid_rate", "distinct", "expected_distinct", "distinct_ratio",
        "entropy", "marker_first_rate", "positional_tv", "positional_tv_baseline",
    ]
    out = {}
    for name in names:
        values = np.array([getattr(r, name) for r in reports], dtype=np.float64)
        out[name] = float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else math.nan
    return out
