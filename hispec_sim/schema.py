"""The one schema shared by the simulator and the executor: plans and profiles.

A plan is a chain of exit layers (1-based, increasing, the last one is the full model).
A profile is hardware + model shape + latency tables + acceptance statistics, and every
figure in it carries a `Source`.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

SCHEMA_VERSION = 1

# The limits of every input, in one place: the schema below, both command lines and the
# JSON loader apply these and nothing else.
MAX_LAYERS = 1024          # decoder layers of a model (and so any exit layer)
FIT_M_RANGE = (-20.0, 20.0)  # the acceptance curve's location m and steepness c (acceptance_fit's bounds)
FIT_C_RANGE = (0.05, 5.0)
MAX_LEVELS = 16            # levels of one plan (chain depth)
MAX_PROPOSE = 64           # drafts per round
MAX_WINDOW = 256           # window of an intermediate level
MAX_BATCH = 4096           # sequences in lockstep
MAX_TP = 1024              # tensor-parallel degree
MAX_CONTEXT = 1 << 24      # context length in tokens (16M)
MAX_MS = 1e6               # any latency figure in ms (1000 s)
MAX_REQUEST_TOKENS = 1_000_000  # a served request's prompt, and its output
MAX_DIM = 1 << 20          # hidden, ffn, heads, vocab of a model shape
MAX_LAG1 = 0.95            # |AR(1) coefficient| of simulated step noise: below 1, or the noise never mixes
MAX_SEED = 2**32 - 1       # numpy and torch seeds
MAX_THREADS = 1024
MAX_STREAMS = 1 << 20      # Monte-Carlo streams
MAX_CYCLES = 1 << 16       # Monte-Carlo cycles per stream
MAX_STREAM_CYCLES = 1 << 26  # streams x cycles (memory and time of one simulation)
MAX_MC_DRAFTS = 1 << 34      # drafts one simulation may walk: streams x cycles x propose x windows (about a minute)
MAX_SEARCH_CELLS = 1 << 32   # buffer cells of one exhaustive search (analytic._level_terms; about a minute)
MAX_REPLAY_FORWARDS = 1 << 25  # forwards one adaptive trace replay may walk (~1 M/s in Python: about a minute)
MAX_SERVE_FORWARDS = 1 << 25   # expected forwards of one serving run (~150 B, 1-7 us each: ~5 GB, a few minutes)
MAX_TRIALS = 100_000       # Optuna trials of one run
MAX_LIST_LEN = 64          # values of a comma-separated flag
MAX_LIST_VALUE = 1 << 20
MAX_TOKEN_ID = 2**31 - 1   # a token id in a trace (vocabularies are far smaller)
MIN_LAYER_MS = 1e-6        # one decoder layer takes at least a nanosecond
MAX_JSON_BYTES = 64 << 20  # profile / plan / validation files (the shipped profiles are < 2 MB)
MAX_JSON_DEPTH = 32        # nesting of those files (a profile nests 6 deep)


def _ascii_number(text: str) -> str:
    """Python's int() and float() also take '1_0' and full-width digits; a command line does not."""
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return text


def strict_int(text: str) -> int:
    """int(text) for ASCII digits only ('1_0' and full-width digits are refused)."""
    return int(_ascii_number(text))


def strict_float(text: str) -> float:
    """float(text) for ASCII text only, as strict_int."""
    return float(_ascii_number(text))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_a_bool(v):
    if isinstance(v, bool):  # pydantic's lax mode would take true as 1
        raise ValueError(f"expected an integer, got {str(v).lower()}")
    return v


Int = Annotated[int, BeforeValidator(_not_a_bool)]  # a count or a layer: JSON true/false is a mistake, not 1/0


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def rounded(x, nd: int = 3):
    """x to nd decimals, or to nd significant digits where decimals would keep fewer than 3
    of them or round it to 0 (a profile can be slow enough for tokens/s below 1e-3, and a
    ratio of zeros is undefined); None for None or a non-finite x (strict JSON)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return round(x, nd) if abs(x) >= 10.0 ** (2 - nd) or x == 0 else float(f"{x:.{max(nd, 3)}g}")


def decimals(x: float, nd: int) -> str:
    """x printed to nd decimals; 3 significant digits where decimals would show fewer (or a
    non-zero x as zero)."""
    return f"{x:.3g}" if 0 < abs(x) < 10.0 ** (2 - nd) else f"{x:.{nd}f}"


def exact_g(x: float) -> str:
    """x as `:g` prints it where that is x, else the shortest text that is (0.9999999999999999
    is not 1: two plans or profiles must not share a name)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def check_one_line(v: str) -> str:
    """Controls (C0, DEL, C1: NEL, the 8-bit escape CSI), line and paragraph separators, and
    bidirectional controls, which would reorder the rest of a terminal line, are refused."""
    import unicodedata

    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI_CONTROLS for c in v):
        raise ValueError("must be one line of text (no newline, tab, line separator, bidirectional or other control character)")
    return v


BLANK_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")  # print as nothing or a blank
JOINERS = frozenset("\u200c\u200d")  # ZWNJ / ZWJ: part of Persian, Indic and emoji spellings between two characters
KEYCAP = "\u20e3"
# scripts whose letters join or conjoin by ZWNJ / ZWJ (Arabic with Syriac and its supplements, the Indic scripts)
_JOINING_SCRIPTS = ((0x0600, 0x08FF), (0x0900, 0x0DFF), (0x1000, 0x109F), (0x1780, 0x18AF), (0xFB50, 0xFDFF),
                    (0xFE70, 0xFEFC))  # + Myanmar, Khmer and Mongolian


def check_name(v: str) -> str:
    """A name: one line (check_one_line) in Unicode NFC, with nothing invisible in it either --
    format characters (zero width space, byte order mark, soft hyphen...), fillers and
    blanks that are letters, spaces at either end. A joiner stays only where it changes what
    is shown: between two emoji, or inside a script that joins (Arabic, Persian, the Indic
    scripts); a variation selector only after a symbol, a CJK ideograph or a keycap's digit
    (as emoji spell): two names that print alike are one name."""
    import unicodedata

    check_one_line(v)
    if v != v.strip():
        raise ValueError("must not start or end with a space")
    if not unicodedata.is_normalized("NFC", v):
        i = next(i for i in range(len(v)) if not unicodedata.is_normalized("NFC", v[:i + 1]))
        raise ValueError(f"must be in Unicode NFC form (composed, marks in canonical order; a name given on the command "
                         f"line is converted): U+{ord(v[i]):04X} ({unicodedata.name(v[i], 'unnamed')}) at position {i} is "
                         f"not; write {unicodedata.normalize('NFC', v)!r}")

    def hidden(c: str) -> bool:
        return unicodedata.category(c) == "Cf" or c in BLANK_LETTERS or _selector(c)

    for i, c in enumerate(v):
        before = v[i - 1] if i else ""
        after = v[i + 1] if i + 1 < len(v) else ""
        if _tag(c):  # a subdivision flag: black flag, tag letters, cancel tag (England, Scotland, Wales)
            ok = _tag_run_ok(v, i)
        elif c in JOINERS:
            ok = (_joining(before) and (_joining(after) or not after or unicodedata.category(after)[0] in "PZ")
                  or c == "\u200d" and _emoji(_base(v, i)) and _emoji(after))  # a word's end: Malayalam chillus
        elif c in _SCRIPT_MARKS:
            lo, hi = _SCRIPT_MARKS[c]
            ok = bool(before) and lo <= ord(before) <= hi
        elif _selector(c):
            ok = bool(before) and (_emoji(before) or "CJK" in unicodedata.name(before, "") or
                                   before in "0123456789#*" and after == KEYCAP)
        else:
            ok = not hidden(c)
        if not ok:
            raise ValueError(f"must be visible text: U+{ord(c):04X} ({unicodedata.name(c, 'unnamed')}) at position {i} "
                             "would not show")
    return v


def _selector(c: str) -> bool:
    return "\ufe00" <= c <= "\ufe0f" or "\U000e0100" <= c <= "\U000e01ef" or c in _SCRIPT_MARKS


# invisible marks that only their own script shows (Mongolian free variation selectors, Khmer coeng): after
# another script's letter a name would print as without them
_SCRIPT_MARKS = {"\u180b": (0x1800, 0x18AF), "\u180c": (0x1800, 0x18AF), "\u180d": (0x1800, 0x18AF),
                 "\u180f": (0x1800, 0x18AF), "\u17d2": (0x1780, 0x17FF)}


def _tag(c: str) -> bool:
    return "\U000e0020" <= c <= "\U000e007f"


def _tag_run_ok(v: str, i: int) -> bool:
    """Tag characters at i belong to a flag: a run of them after U+1F3F4 that ends with the
    cancel tag U+E007F."""
    j = i
    while j > 0 and _tag(v[j - 1]):
        j -= 1
    k = i
    while k + 1 < len(v) and _tag(v[k + 1]):
        k += 1
    code = v[j:k]  # a subdivision: 3-6 lower-case tag letters or digits (gbeng); any other run shows a bare flag
    return j > 0 and v[j - 1] == "\U0001f3f4" and v[k] == "\U000e007f" and 3 <= len(code) <= 6 and all(
        "\U000e0061" <= t <= "\U000e007a" or "\U000e0030" <= t <= "\U000e0039" for t in code)


def _joining(c: str) -> bool:
    return bool(c) and any(lo <= ord(c) <= hi for lo, hi in _JOINING_SCRIPTS)


def _emoji(c: str) -> bool:
    """A symbol that emoji sequences build on: emoji are 'So' (and arrows 'Sm', double marks
    'Po'), skin tones are modifiers ('Sk')."""
    import unicodedata

    cat = unicodedata.category(c) if c else ""
    return cat in ("So", "Sk") or cat == "Sm" and ord(c) >= 0x2000 or c in "\u203c\u2049\u2139\u3030\u303d"


def _base(v: str, i: int) -> str:
    """The character a joiner at i follows, past variation selectors (an emoji's VS16)."""
    j = i - 1
    while j >= 0 and _selector(v[j]):
        j -= 1
    return v[j] if j >= 0 else ""


def check_no_bidi(v: str) -> str:
    if any(c in BIDI_CONTROLS for c in v):
        raise ValueError("bidirectional control characters would reorder the text around them; remove them")
    return v


MAX_NAME = 200
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(check_name)]  # printed on one line


# --------------------------------------------------------------------------- plan


class Plan(Strict):
    """A chain of levels over exit layers l_1 < ... < l_k = L.

    Level 1 drafts `propose` tokens per round from exit l_1; level j (1 < j < k) checks
    what the level below accumulated once it holds >= `windows[j-2]` tokens; level k (the
    full model) commits. [L] is autoregressive, [E, L] single-level self-speculation.
    """

    # the item ranges are checked by the validators below (one message each); the published
    # JSON Schema states them too (json_schema_extra), so a plan it accepts loads
    levels: list[Int] = Field(min_length=1, max_length=MAX_LEVELS,
                              description="exit layers, 1-based, increasing; the last is the full model",
                              json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": MAX_LAYERS}})
    propose: Int = Field(1, ge=1, le=MAX_PROPOSE, description="drafts per round at level 1")
    windows: list[Int] = Field(default_factory=list, description="one window per intermediate level",
                               json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW}})
    mode: Literal["greedy", "sampling"] = "greedy"
    batch: Int = Field(1, ge=1, le=MAX_BATCH, description="sequences decoded in lockstep")
    batching: Literal["ragged", "synchronous"] = Field(
        "ragged",
        description="batch > 1 (serving): 'ragged' = in one step every sequence runs the layers its own next "
        "operation needs (drafting sequences share layers 1..l_1, only those whose level-j check is due go on "
        "through l_{j-1}+1..l_j); 'synchronous' = every sequence of the batch does the same operation each step "
        "(a check carries every sequence's own buffer, rows concatenated, not padded)",
    )
    draft_confidence: float | None = Field(
        None, description="adaptive drafting: end the round early once a draft's top-1 probability at exit l_1 "
        "is < this threshold (that draft is kept and checked); propose stays the cap. None or 0 = fixed rounds",
        json_schema_extra={"minimum": 0, "maximum": 1})
    escalate_confidence: list[float] | None = Field(
        None, description="early escalation, one threshold per intermediate level: after level j's check, check "
        "upward at once when level j's own emitted token (correction or bonus) has top-1 probability < tau_j; "
        "windows stay the caps. None or all 0 = fixed windows",
        json_schema_extra={"items": {"type": "number", "minimum": 0, "maximum": 1}})

    @field_validator("levels")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(x < 1 or x > MAX_LAYERS for x in v):
            raise ValueError(f"exit layers must be in [1, {MAX_LAYERS}]")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("exit layers must be strictly increasing")
        return v

    @field_validator("windows")
    @classmethod
    def _windows_positive(cls, v: list[int]) -> list[int]:
        if any(w < 1 or w > MAX_WINDOW for w in v):
            raise ValueError(f"every window must be in [1, {MAX_WINDOW}]")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "Plan":
        k = len(self.levels)
        if len(self.windows) != max(k - 2, 0):
            raise ValueError(f"windows: a {k}-level chain needs {max(k - 2, 0)} window(s), got {len(self.windows)}")
        if k == 1 and self.propose != 1:
            self.propose = 1  # autoregressive has no drafts; normalise so equal plans compare equal
        if self.draft_confidence is not None:
            if not (math.isfinite(self.draft_confidence) and 0.0 <= self.draft_confidence <= 1.0):
                raise ValueError(f"draft_confidence: must be in [0, 1], got {self.draft_confidence}")
            if k == 1:
                raise ValueError("draft_confidence: an autoregressive plan has no drafts")
        if self.escalate_confidence is not None:
            if any(not (math.isfinite(t) and 0.0 <= t <= 1.0) for t in self.escalate_confidence):
                raise ValueError(f"escalate_confidence: every threshold must be in [0, 1], got {self.escalate_confidence}")
            if k < 3:
                raise ValueError(f"escalate_confidence: a {k}-level chain has no intermediate level; "
                                 f"leave it out (or null)")
            if len(self.escalate_confidence) != k - 2:
                raise ValueError(f"escalate_confidence: a {k}-level chain has {k - 2} intermediate level(s), "
                                 f"got {len(self.escalate_confidence)} threshold(s)")
        return self

    @model_serializer(mode="wrap")
    def _omit_fixed_thresholds(self, handler):
        """A fixed plan serialises as before the thresholds existed (golden files, plan files)."""
        d = handler(self)
        for name in ("draft_confidence", "escalate_confidence"):
            if isinstance(d, dict) and d.get(name) is None:
                d.pop(name, None)
        return d

    @property
    def adaptive(self) -> bool:
        """Whether a confidence threshold changes anything (tau = 0 is the fixed plan)."""
        return bool(self.draft_confidence) or any(self.escalate_confidence or [])

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def max_overshoot(self) -> int:
        """Tentative (uncommitted) tokens a sequence may hold beyond its committed ones, at
        most: every buffer full (propose + the windows), one token per level beyond it, and
        the bonus; autoregressive 1. A check carries at most this many rows per sequence."""
        return 1 if self.depth == 1 else self.propose + sum(self.windows) + self.depth + 1

    @property
    def family(self) -> str:
        return {1: "autoregressive", 2: "single_level"}.get(self.depth, f"{self.depth}_level")

    def check_depth(self, num_layers: int, field: str = "levels") -> None:
        """Raise ValueError unless the chain ends at the model's last layer."""
        if self.levels[-1] != num_layers:
            raise ValueError(f"{field}: the last exit must be the full model's last layer {num_layers}, got {self.levels[-1]}")

    def describe(self, short: bool = False) -> str:
        """[10,20,80] propose=2 window=4, or with short=True [10,20,80] g=2 w=4."""
        s = "[" + ",".join(map(str, self.levels)) + "]"
        if self.depth >= 2:
            s += (" g=" if short else " propose=") + str(self.propose)
        if self.windows:
            s += (" w=" if short else " window=") + ",".join(map(str, self.windows))
        if self.draft_confidence:
            s += f" tau_d={exact_g(self.draft_confidence)}"
        if any(self.escalate_confidence or []):
            s += " tau_e=" + ",".join(map(exact_g, self.escalate_confidence))
        return s


def autoregressive_plan(num_layers: int, batch: int = 1) -> Plan:
    return Plan(levels=[num_layers], batch=batch)


# --------------------------------------------------------------------------- provenance


class Source(Strict):
    """Where a figure comes from."""

    kind: Literal["measured", "published", "derived", "assumed", "fitted"]
    detail: str = Field(description="what was measured / which publication / how it was derived")
    reference: str | None = Field(None, description="URL, file or paper identifier")


# --------------------------------------------------------------------------- profile parts


class Hardware(Strict):
    name: Name
    gpus: int = Field(1, ge=1)
    hbm_gb: float | None = Field(None, gt=0, le=1e9)  # bounded: memory arithmetic must stay finite
    hbm_gbps: float | None = Field(None, gt=0, le=1e12)
    bf16_tflops: float | None = Field(None, gt=0, le=1e12)
    source: Source


class ModelShape(Strict):
    name: Name
    num_layers: int = Field(ge=1, le=MAX_LAYERS)
    hidden: int = Field(ge=1, le=MAX_DIM)
    heads: int = Field(ge=1, le=MAX_DIM)
    kv_heads: int = Field(ge=1, le=MAX_DIM)
    ffn: int = Field(ge=1, le=MAX_DIM)
    vocab: int = Field(ge=2, le=MAX_DIM)
    max_context: int | None = Field(None, ge=2, le=MAX_CONTEXT, description="tokens one sequence may hold (prompt + "
                                    "output + speculation); None: not known, nothing checked against it")
    weights: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$",
                                description="digest of the weights as the executor runs them (hispec_exec.checkpoint."
                                "weights_digest); None: not recorded (published profiles), not compared")
    text: Literal["bytes", "tokenizer"] | None = Field(
        None, description="how the model reads text: 'bytes' (UTF-8, one token a byte), 'tokenizer' (its own "
        "tokenizer.json, which hispec-sim does not have); None: not recorded, bytes where vocab <= 256")
    tokenizer: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$",
                                  description="digest of the tokenizer.json the workloads were read with (text "
                                  "'tokenizer'); None: bytes, or not recorded, not compared")
    source: Source

    @model_validator(mode="after")
    def _shape_exists(self):
        # the roofline attention reads head_dim = hidden // heads and groups heads by kv_heads
        if self.heads > self.hidden:
            raise ValueError(f"heads: {self.heads} exceeds hidden ({self.hidden}): no head dimension left; "
                             f"allowed: heads <= hidden")
        if self.hidden % self.heads:
            raise ValueError(f"hidden: {self.hidden} is not a multiple of heads ({self.heads}); allowed: heads x the "
                             f"head dimension")
        if self.kv_heads > self.heads or self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: {self.kv_heads} must divide heads ({self.heads}); allowed: a divisor of heads")
        if self.tokenizer is not None and self.text != "tokenizer":
            raise ValueError(f"tokenizer: a tokenizer.json digest with text {self.text!r}; allowed: text 'tokenizer'")
        return self

    @property
    def reads_bytes(self) -> bool:
        """Whether a text prompt's length in tokens is its length in UTF-8 bytes."""
        return self.text == "bytes" if self.text is not None else self.vocab <= 256

    def check_context(self, tokens: int, field: str, what: str = "", hint: str = "") -> None:
        """Raise ValueError naming `field` when `tokens` exceed the model's context."""
        if self.max_context is not None and tokens > self.max_context:
            raise ValueError(f"{field}: {what or tokens} tokens, beyond the model's context of {self.max_context} (the "
                             f"profile's model.max_context); " + (hint or f"allowed: <= {self.max_context}"))


def _finite_nonneg(values, field: str, lo: float = 0.0):
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= MAX_MS):
            raise ValueError(f"{field}: must be in [{lo:g}, {MAX_MS:g}] ms, got {v}")


class AttentionKernel(Strict):
    """Measured attention kernel of ONE decoder layer (softmax(QK^T)V over the KV cache),
    kept apart from `LatencyTable.layer_ms` (whose context axis then stays unused).

    decode_ms[i][j]: one decode step of decode_batch[i] sequences, one new token each, at
    mean KV length decode_context[j] (the whole batch: one kernel launch);
    prefill_ms[i][j]: prefill of prefill_tokens[i] new tokens of one sequence after
    prefill_context[j] cached ones (causal among the new tokens). Grids are interpolated
    linearly and extrapolated linearly from the last two points, never below the last
    (floored at `floor_ms`).
    Either grid may be absent: then the roofline increment of `layer_ms` is used, floored
    at `floor_ms` (the measured time of the smallest kernel).
    """

    decode_batch: list[int] = Field(default_factory=list)
    decode_context: list[int] = Field(default_factory=list)
    decode_ms: list[list[float]] = Field(default_factory=list)
    prefill_tokens: list[int] = Field(default_factory=list)
    prefill_context: list[int] = Field(default_factory=list)
    prefill_ms: list[list[float]] = Field(default_factory=list)
    floor_ms: float = Field(0.0, ge=0, le=10, allow_inf_nan=False, description="smallest attention kernel time (launch-bound)")
    source: Source

    @model_validator(mode="after")
    def _grids(self) -> "AttentionKernel":
        for name, rows, cols, grid in (("decode", self.decode_batch, self.decode_context, self.decode_ms),
                                       ("prefill", self.prefill_tokens, self.prefill_context, self.prefill_ms)):
            if not rows and not cols and not grid:
                continue
            for axis in (rows, cols):
                if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] < 0:
                    raise ValueError(f"attention.{name}: axes must be non-empty, increasing and >= 0")
            if len(grid) != len(rows) or any(len(r) != len(cols) for r in grid):
                raise ValueError(f"attention.{name}_ms: must be len(rows) x len(contexts)")
            _finite_nonneg([v for r in grid for v in r], f"attention.{name}_ms")
        return self


class StepNoise(Strict):
    """Step-time noise of the serve loop (hispec_sim.step_noise): quantiles of the ratio
    real iteration ms / fitted ms at probabilities (i + 1/2) / n, non-decreasing, > 0,
    rescaled so that the sampler's mean is 1 (with split_ms: short_quantiles for steps
    shorter than it, quantiles for the others; without: one pooled distribution); the
    lag-1 autocorrelation of its normal scores (0: i.i.d. steps; the sampler is AR(1) in
    normal-score space); iterations measured."""

    quantiles: list[float] = Field(min_length=3, max_length=257)
    short_quantiles: list[float] | None = Field(None, min_length=3, max_length=257,
                                                description="for steps shorter than split_ms (quantiles: the others)")
    split_ms: float | None = Field(None, gt=0, le=MAX_MS)
    lag1_autocorrelation: float = Field(0.0, ge=-MAX_LAG1, le=MAX_LAG1)
    lag1_measured: float | None = Field(None, ge=-1, le=1, description="as measured (stored as 0 when not significant)")
    iterations: int = Field(ge=1)
    ratio_mean: float | None = Field(None, gt=0, le=100, description="mean measured / fitted before the rescaling "
                                     "(the simulated steps keep the fit's mean: information only)")

    @model_validator(mode="after")
    def _quantiles(self) -> "StepNoise":
        if (self.short_quantiles is None) != (self.split_ms is None):
            raise ValueError("serving.step_noise.split_ms: give both short_quantiles and split_ms, or neither")
        for name in ("quantiles", "short_quantiles"):
            q = getattr(self, name)
            if q is None:
                continue
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 100 for v in q):
                raise ValueError(f"serving.step_noise.{name}: must be finite, > 0 and <= 100")
            if any(b < a for a, b in zip(q, q[1:])):
                raise ValueError(f"serving.step_noise.{name}: must be non-decreasing")
        return self


class ServingCalibration(Strict):
    """What a serving step costs beyond the batch-1 table, measured through the executor's
    batched path (hispec_exec.measure_serving; read by hispec_sim.serving only).

    layer_ms[i][j]: ONE layer of a batched forward of batches[i] sequences with rows[j] new
    tokens each at `context` cached tokens (attention beyond it: the table's per-sequence
    increment); read at (sequences, mean rows per sequence), bilinear inside, beyond the
    last batch extrapolated from the last two (never decreasing), beyond the last rows by
    the table's linear part. A step's layers (grid + attention) cost forward_scale x what
    the grid and the table give, and its host time beyond its forward and exit head is
    step_ms + sequence_ms x running sequences + check_ms x sequences checking: both fitted
    together on the serve loop's own iterations (short draft steps and full-depth steps
    tell a per-step cost from a per-layer one; the scale carries the grid to the loop, as
    the batch-1 table's in-situ scale does). Without forward_scale (older profiles): 1.
    step_noise: each step's time x a draw of the measured ratio real / fitted (StepNoise).
    An admission costs its prefill forward -- prefill_scale x what the prefill grid gives
    (older profiles: forward_scale) -- plus admit_ms (the admitting iteration's extra host
    time), plus wake_ms when the engine idled before it (the first forward after an idle
    spell runs slower; on the AVX-512 VM the excess saturated within ~20 ms of idling).
    Attention: the executor runs every sequence of a forward against its longest context
    and most rows, and every slot of a pool at least half full (latency.padded_sequences).
    attention_gathered_ms / attention_in_place_ms [i][j]: ONE layer's time a step adds per
    such sequence when they carry at most attention_rows[i] new tokens and the longest holds
    attention_contexts[j] cached, over the same step at context 0; gathered (a pool more
    than twice the sequences: their blocks are copied every layer) or read in place.
    attention_single_ms: the same for ONE sequence gathered (a step's first sequence pays a
    share of per-step work the grid's pair splits in two); without it, attention_gathered_ms.
    Without the grids (older profiles): the batch-1 table's increment (one slot, in place).
    """

    batches: list[int] = Field(min_length=1)
    rows: list[int] = Field(min_length=1)
    context: int = Field(0, ge=0, le=MAX_CONTEXT)
    layer_ms: list[list[float]]
    layer_ms_se: list[list[float]] | None = None
    step_ms: float = Field(0.0, ge=0, le=MAX_MS)
    sequence_ms: float = Field(0.0, ge=0, le=MAX_MS)
    check_ms: float = Field(0.0, ge=0, le=MAX_MS)
    step_ms_se: float | None = Field(None, ge=0)
    sequence_ms_se: float | None = Field(None, ge=0)
    check_ms_se: float | None = Field(None, ge=0)
    forward_scale: float = Field(1.0, gt=0, le=10)
    forward_scale_se: float | None = Field(None, ge=0)
    step_noise: StepNoise | None = Field(
        None, description="measured step-time noise; None (older profiles): deterministic steps")
    prefill_rows: list[int] | None = Field(
        None, description="prompt tokens per sequence of the prefill grid; None (older profiles): prefills read layer_ms")
    prefill_layer_ms: list[list[float]] | None = Field(
        None, description="ONE layer of a prefill forward (the executor's prefill tiles), len(batches) x len(prefill_rows)")
    prefill_scale: float | None = Field(
        None, gt=0, le=10, description="prefill forwards' scale from the grid to the serve loop; None: forward_scale")
    prefill_scale_se: float | None = Field(None, ge=0)
    admit_ms: float = Field(0.0, ge=0, le=MAX_MS, description="extra ms of an iteration that admits requests")
    admit_ms_se: float | None = Field(None, ge=0)
    wake_ms: float = Field(0.0, ge=0, le=MAX_MS, description="extra ms of the first iteration after the engine idled")
    wake_ms_se: float | None = Field(None, ge=0)
    attention_rows: list[int] | None = Field(
        None, description="new tokens per sequence of the attention grids; None (older profiles): the table's increments")
    attention_contexts: list[int] | None = Field(
        None, description="cached tokens of the longest sequence of the attention grids (the first 0)")
    attention_gathered_ms: list[list[float]] | None = Field(
        None, description="ONE layer's attention per sequence, pool more than twice the sequences (blocks gathered): "
        "len(attention_rows) x len(attention_contexts)")
    attention_in_place_ms: list[list[float]] | None = Field(
        None, description="the same, pool at most twice the sequences (every slot read in place)")
    attention_single_ms: list[list[float]] | None = Field(
        None, description="the same, one sequence alone (blocks gathered); None (older profiles): attention_gathered_ms")
    source: Source

    @model_validator(mode="after")
    def _grid(self) -> "ServingCalibration":
        attention = (self.attention_rows, self.attention_contexts, self.attention_gathered_ms, self.attention_in_place_ms)
        if any(a is None for a in attention) != all(a is None for a in attention):
            raise ValueError("serving.attention_rows: the attention rows, contexts and both grids come together")
        if self.attention_single_ms is not None and self.attention_rows is None:
            raise ValueError("serving.attention_single_ms: needs attention_rows, attention_contexts and both grids")
        if self.attention_contexts is not None and self.attention_contexts[0] != 0:
            raise ValueError("serving.attention_contexts: must start at 0 (the increments are over context 0)")
        if (self.prefill_rows is None) != (self.prefill_layer_ms is None):
            raise ValueError("serving.prefill_rows: prefill_rows and prefill_layer_ms come together")
        # (first axis, second axis, grid, least entry): layers as latency.layer_ms, attention increments from 0
        grids = [("batches", "rows", "layer_ms", MIN_LAYER_MS)]
        if self.prefill_rows is not None:
            grids.append(("batches", "prefill_rows", "prefill_layer_ms", MIN_LAYER_MS))
        if self.attention_rows is not None:
            grids += [("attention_rows", "attention_contexts", name, 0.0)
                      for name in ("attention_gathered_ms", "attention_in_place_ms", "attention_single_ms")
                      if getattr(self, name) is not None]
        for name in dict.fromkeys(a for g in grids for a in g[:2]):
            axis = getattr(self, name)
            first = 0 if name == "attention_contexts" else 1
            if not axis or any(b <= a for a, b in zip(axis, axis[1:])) or axis[0] < first:
                raise ValueError(f"serving.{name}: must be increasing, >= {first}")
        for rows_name, cols_name, name, lo in grids:
            rows, cols, grid = getattr(self, rows_name), getattr(self, cols_name), getattr(self, name)
            if len(grid) != len(rows) or any(len(r) != len(cols) for r in grid):
                raise ValueError(f"serving.{name}: must be len({rows_name}) x len({cols_name})")
            _finite_nonneg([v for r in grid for v in r], f"serving.{name}", lo)
        return self


class LatencyTable(Strict):
    """Latency of one serving configuration (tensor-parallel degree x serving stack).

    layer_ms[i][j]: time of ONE decoder layer (attention kernel and all-reduces included)
    at batch 1, with tokens[i] new tokens after contexts[j] cached ones. At batch B the
    cost model reads the linear part at B x tokens and adds B times one sequence's
    attention increment (latency.batched_layer_ms): each sequence reads its own cache.
    Values between grid points are interpolated linearly, beyond the grid extrapolated
    linearly from the last two points, never below the last (a decreasing last pair is
    noise). layer_ms holds a layer as it runs in a forward over
    all layers; working_set_* say how much less it takes in a forward over layers 1..k only
    (measured on CPUs whose cache holds k layers' weights but not all: latency.working_set_ms).
    """

    tp: int = Field(1, ge=1, le=MAX_TP, description="tensor-parallel degree")
    stack: Name = Field("compiled", description="serving stack, e.g. compiled or hf_eager")
    tokens: list[int] = Field(min_length=1)
    contexts: list[int] = Field(min_length=1)
    layer_ms: list[list[float]]
    head_ms: list[float] = Field(description="final norm + LM head over tokens[i] tokens")
    overhead_ms: float = Field(0.0, ge=0, le=MAX_MS, description="fixed cost of every forward (launch, sampling, host)")
    layer_overhead_ms: float = Field(0.0, ge=-MAX_MS, le=MAX_MS,
                                     description="host cost per layer per forward (eager stacks); negative (above minus "
                                                 "the smallest layer_ms): a measured table timed slower than the decode "
                                                 "loop it prices")
    verify_overhead_ms: float = Field(0.0, ge=0, le=MAX_MS, description="extra fixed cost of a verification forward (compare, crop)")
    row_overhead_ms: float | None = Field(None, ge=0, le=MAX_MS,
                                          description="extra cost per layer for each new token of a sequence beyond its "
                                                      "first in a decode forward (multi-token checks), fitted on the "
                                                      "decode loop, whose checks cost more than the table's token "
                                                      "increment; not in prefills; None: 0 (profiles measured before "
                                                      "2026-11-30 16:30 UTC and published ones)")
    source: Source
    notes: dict[str, str] = Field(default_factory=dict)
    attention: AttentionKernel | None = Field(
        None, description="measured attention kernel (or a measured floor); None: the attention in layer_ms is used as is")
    serving: ServingCalibration | None = Field(
        None, description="batched-step costs measured through the executor's serving path; None: serving reads the table")
    working_set_layers: list[int] | None = Field(
        None, description="depth k of a decode forward (it runs layers 1..k), increasing")
    working_set_ms: list[float] | None = Field(
        None, description="time added to a layer last run by such a forward (<= 0, above minus the smallest "
                          "layer_ms): only k layers' weights went through the cache since; None: none "
                          "(latency.working_set_ms)")

    @model_validator(mode="after")
    def _grid(self) -> "LatencyTable":
        for name, grid in (("tokens", self.tokens), ("contexts", self.contexts)):
            if any(b <= a for a, b in zip(grid, grid[1:])) or grid[0] < 0 or grid[-1] > MAX_CONTEXT:
                raise ValueError(f"latency.{name}: must be increasing, in [0, {MAX_CONTEXT}]")
        if len(self.layer_ms) != len(self.tokens) or any(len(r) != len(self.contexts) for r in self.layer_ms):
            raise ValueError("latency.layer_ms: must be len(tokens) x len(contexts)")
        if len(self.head_ms) != len(self.tokens):
            raise ValueError("latency.head_ms: must have one value per tokens entry")
        # a layer takes time: at 0 (or 1e-300) every speed-up divides by zero
        _finite_nonneg([v for r in self.layer_ms for v in r], "latency.layer_ms", MIN_LAYER_MS)
        _finite_nonneg(self.head_ms, "latency.head_ms")
        ks, ws = self.working_set_layers or [], self.working_set_ms or []
        if len(ks) != len(ws) or any(b <= a for a, b in zip(ks, ks[1:])) or (ks and ks[0] < 1):
            raise ValueError("latency.working_set_layers: must be increasing, >= 1, one per working_set_ms value")
        floor = self.smallest_layer_ms  # a credit saves less than the whole layer
        if not self.layer_overhead_ms > -floor:
            raise ValueError(f"latency.layer_overhead_ms: must be above -{floor:g} (minus the smallest layer_ms)")
        floor += min(self.layer_overhead_ms, 0.0)
        if any(not (-floor < v <= 0) for v in ws):
            raise ValueError(f"latency.working_set_ms: must be in (-{floor:g}, 0] (the smallest layer_ms with "
                             f"layer_overhead_ms)")
        return self

    @property
    def key(self) -> str:
        return f"tp{self.tp}/{self.stack}"

    @property
    def smallest_layer_ms(self) -> float:
        return min(min(r) for r in self.layer_ms)


class AcceptanceSpread(Strict):
    """How agreement varies from request to request (a workload's per-request distribution).

    empirical: `per_request` holds one agreement matrix (over the workload's exits) per
    measured request, e.g. per prompt of `profile measure`; logit_normal: a request's rates
    are the workload's rates shifted by z ~ N(0, sigma) in logit space (published profiles:
    sigma is an assumption, stated in `source`).
    """

    family: Literal["empirical", "logit_normal"]
    sigma: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    per_request: list[list[list[float]]] | None = None
    weights: list[float] | None = Field(None, description="empirical: tokens measured per request (default equal)")
    source: Source

    @model_validator(mode="after")
    def _params(self) -> "AcceptanceSpread":
        if self.family == "logit_normal" and self.sigma is None:
            raise ValueError("spread.sigma: logit_normal needs sigma")
        if self.family == "empirical" and not self.per_request:
            raise ValueError("spread.per_request: empirical needs at least one request")
        if self.family == "empirical" and self.sigma is not None:
            raise ValueError("spread.sigma: only with family 'logit_normal' (empirical spreads are per_request)")
        if self.family == "logit_normal" and (self.per_request is not None or self.weights is not None):
            raise ValueError("spread.per_request, spread.weights: only with family 'empirical' (logit_normal is sigma)")
        if self.per_request:
            for r in self.per_request:
                for row in r:
                    if any(not (math.isfinite(v) and 0.0 <= v <= 1.0) for v in row):
                        raise ValueError("spread.per_request: values must be in [0, 1]")
            if self.weights is not None and len(self.weights) != len(self.per_request):
                raise ValueError("spread.weights: one weight per request")
        if self.weights is not None and (any(not (math.isfinite(w) and w >= 0) for w in self.weights)
                                         or not 0 < sum(self.weights) < math.inf):
            raise ValueError("spread.weights: finite values >= 0, at least one > 0, with a finite sum")
        return self


class ConfidenceStats(Strict):
    """Top-1 probabilities of every exit along the measured positions (the rows of the
    workload's traces), and what they say about agreement.

    top1[i][a]: softmax (temperature 1) top-1 probability of exit exits[a] at trace row i,
    rounded down to 4 decimals (so `top1 < tau` is exact for thresholds of <= 4 decimals).
    buckets: increasing edges in [0, 1] (bucket b = [buckets[b], buckets[b+1]), the last
    one closed). share[a][b]: fraction of positions where exit a's top-1 probability falls
    in bucket b; agreement_given_bucket[a][c][b]: P(exits a and c agree | exit a in bucket b)
    (None where the bucket is empty).
    """

    buckets: list[float] = Field(min_length=2)
    share: list[list[float]]
    agreement_given_bucket: list[list[list[float | None]]]
    top1: list[list[float]] | None = None
    source: Source

    @model_validator(mode="after")
    def _check(self) -> "ConfidenceStats":
        b = self.buckets
        if b[0] != 0.0 or b[-1] != 1.0 or any(y <= x for x, y in zip(b, b[1:])):
            raise ValueError("confidence.buckets: increasing edges from 0 to 1")
        vals = [v for r in self.share for v in r] + [v for m in self.agreement_given_bucket for r in m for v in r
                                                     if v is not None] + [v for r in self.top1 or [] for v in r]
        if any(not (math.isfinite(v) and 0.0 <= v <= 1.0) for v in vals):
            raise ValueError("confidence: probabilities must be in [0, 1]")
        bad = next((a for a, r in enumerate(self.share) if abs(sum(r) - 1.0) > 1e-3), None)
        if bad is not None:  # fractions of one exit's positions over the buckets
            raise ValueError(f"confidence.share: row {bad} sums to {sum(self.share[bad]):.6g}; each row's shares must sum to 1")
        return self


class _FitPart(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # a fit record also carries notes


class FitConfig(_FitPart):
    """The speculative loop a per_draft figure was measured in, and the level it counts."""

    levels: list[Int] = Field(min_length=2, max_length=MAX_LEVELS)
    propose: Int = Field(ge=1, le=MAX_PROPOSE)
    windows: list[Int]
    level: Int = Field(ge=2, le=MAX_LEVELS)

    @model_validator(mode="after")
    def _plan(self) -> "FitConfig":
        Plan(levels=self.levels, propose=self.propose, windows=self.windows)
        if self.level > len(self.levels):
            raise ValueError(f"level: must be in [2, {len(self.levels)}] (the plan's levels)")
        return self


class FitPoint(_FitPart):
    """One published figure a curve was fitted to (acceptance_fit.Point)."""

    workload: str = Field(max_length=200)
    kind: Literal["final", "pair", "mean_layer", "per_draft"]
    value: float = Field(ge=0, le=MAX_LAYERS)
    exit: Int | None = Field(None, ge=1, le=MAX_LAYERS)
    exit2: Int | None = Field(None, ge=1, le=MAX_LAYERS)
    config: FitConfig | None = None
    source: str = ""

    @model_validator(mode="after")
    def _needs(self) -> "FitPoint":
        need = {"final": ("exit",), "pair": ("exit", "exit2"), "per_draft": ("config",)}.get(self.kind, ())
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{missing[0]}: a {self.kind} point needs it")
        if self.kind != "mean_layer" and self.value > 1:
            raise ValueError(f"value: a {self.kind} point is a rate, in [0, 1]")
        return self


class FitRecord(_FitPart):
    """The parts of Acceptance.fit that the audit and the spread refit read; the record
    stays a dict in the profile (its notes and layout are the fitter's)."""

    family: str = ""
    num_layers: Int | None = Field(None, ge=1, le=MAX_LAYERS)
    params: dict[str, float] | None = None
    points: list[FitPoint] = Field(default_factory=list)
    max_abs_residual: float | None = None
    F_at_exits: dict[str, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "FitRecord":
        for k in self.F_at_exits or {}:
            if not (k.isdigit() and 1 <= int(k) <= MAX_LAYERS):
                raise ValueError(f"F_at_exits: keys are exit layers in [1, {MAX_LAYERS}], got {k!r}")
        if self.sigmoid:
            if not {"m", "c"} <= set(self.params or {}):
                raise ValueError("params: the sigmoid family needs m and c")
            for k, (lo, hi) in (("m", FIT_M_RANGE), ("c", FIT_C_RANGE)):  # the fitter's bounds
                if not lo <= self.params[k] <= hi:
                    raise ValueError(f"params.{k}: must be in [{lo:g}, {hi:g}] (the fitter's range), "
                                     f"got {self.params[k]:g}")
        return self

    @property
    def sigmoid(self) -> bool:
        return self.family.startswith("F(e) = sigmoid(")

    def check_agreement(self, acc: "Acceptance", L: int) -> None:
        """A sigmoid record's curve is the workload's matrix, F(a) / F(b) for a < b (the
        audit reads the record, every other command the matrix: they must not disagree)."""
        if not self.sigmoid:
            return
        from .acceptance_fit import curve  # acceptance_fit imports this module

        F = curve(np.asarray(acc.exits) / L, self.params["m"], self.params["c"])
        _same_matrix(np.asarray(acc.agreement), np.minimum.outer(F, F) / np.maximum.outer(F, F), acc.exits,
                     f"the fit record's curve F(a) / F(b) at m = {self.params['m']:g}, c = {self.params['c']:g}")

    def check_model(self, L: int) -> None:
        """The record against the model's L layers: its num_layers, its exits, and its per_draft
        plans ending at the full model."""
        if self.num_layers not in (None, L):
            raise ValueError(f"num_layers: must be model.num_layers {L}, got {self.num_layers}")
        for i, q in enumerate(self.points):
            top = max([q.exit or 0, q.exit2 or 0] + (q.config.levels if q.config else []))
            if top > L:
                raise ValueError(f"points.{i}: exit layers must be in [1, {L}] (model.num_layers), got {top}")
            if q.config is not None and q.config.levels[-1] != L:
                raise ValueError(f"points.{i}.config.levels: a per_draft plan ends at the full model {L}, "
                                 f"got {q.config.levels}")


def _fit_record(v: dict) -> FitRecord:
    try:
        return FitRecord.model_validate(v, strict=True)
    except ValidationError as e:
        raise ValueError(validation_message(e)) from None


AGREEMENT_TOLERANCE = 1e-5  # a matrix is stored to 6 decimals


def _same_matrix(A: np.ndarray, want: np.ndarray, exits: list[int], what: str) -> None:
    i, j = np.unravel_index(int(np.argmax(np.abs(A - want))), A.shape)
    if abs(A[i, j] - want[i, j]) > AGREEMENT_TOLERANCE:
        raise ValueError(f"acceptance.agreement: must be {what} (within {AGREEMENT_TOLERANCE:g}); at exits "
                         f"{exits[i]} and {exits[j]} it is {A[i, j]:.6g}, they give {want[i, j]:.6g}")


class Acceptance(Strict):
    """Greedy agreement statistics of one workload.

    agreement[a][b] = P(argmax of exit exits[a] == argmax of exit exits[b]) at a position,
    given the committed prefix. traces (optional): per measured position, the argmax token
    of every exit in `exits` (rows = positions, in order; `trace_starts` marks where each
    prompt's positions begin) for Monte-Carlo replay and exact joint rates.
    """

    exits: list[int] = Field(min_length=1)
    agreement: list[list[float]]
    context: int = Field(512, ge=0, le=MAX_CONTEXT, description="mean context length (prompt + half the generation)")
    traces: list[list[int]] | None = None
    trace_starts: list[int] | None = None
    joint: Literal["independent", "traces"] = Field(
        "independent",
        description="how conditional rates of a chain are obtained: 'independent' = agreement "
        "events of consecutive levels are independent (exact under the depth-Markov model a "
        "published profile is fitted with); 'traces' = empirical joint from traces",
    )
    source: Source
    fit: dict | None = Field(None, description="fitted curve, its inputs and residuals, when fitted (schema.FitRecord, "
                                               "checked against the model by Profile)")
    spread: AcceptanceSpread | None = Field(None, description="per-request distribution of the rates (None: every request at the mean)")
    confidence: ConfidenceStats | None = Field(None, description="top-1 probabilities of every exit per trace row "
                                               "(adaptive plans are evaluated only where these were measured)")

    @model_validator(mode="after")
    def _check(self) -> "Acceptance":
        n = len(self.exits)
        if any(b <= a for a, b in zip(self.exits, self.exits[1:])):
            raise ValueError("acceptance.exits: must be increasing")
        if len(self.agreement) != n or any(len(r) != n for r in self.agreement):
            raise ValueError("acceptance.agreement: must be len(exits) x len(exits)")
        for r in self.agreement:
            for v in r:
                if not (isinstance(v, (int, float)) and math.isfinite(v) and 0.0 <= v <= 1.0):
                    raise ValueError(f"acceptance.agreement: values must be in [0, 1], got {v}")
        # P(exits a and b agree): symmetric, and an exit always agrees with itself
        if not _is_agreement(self.agreement):
            raise ValueError("acceptance.agreement: must be symmetric with 1 on the diagonal (agreement of exits a and b)")
        if any(e < 1 or e > MAX_LAYERS for e in self.exits):
            raise ValueError(f"acceptance.exits: must be in [1, {MAX_LAYERS}]")
        if self.traces is not None:
            if any(len(r) != n for r in self.traces):
                raise ValueError("acceptance.traces: rows must have one token per exit")
            if any(not 0 <= t <= MAX_TOKEN_ID for r in self.traces for t in r):
                raise ValueError(f"acceptance.traces: tokens must be >= 0 and <= {MAX_TOKEN_ID}")
        if self.trace_starts is not None:
            rows = len(self.traces or [])
            s = self.trace_starts
            if not self.traces or not s or s[0] != 0 or any(x >= rows for x in s) or any(b <= a for a, b in zip(s, s[1:])):
                raise ValueError(f"acceptance.trace_starts: must be increasing row indices in [0, {max(rows - 1, 0)}] "
                                 "of traces, the first 0")
        if self.joint == "traces" and not self.traces:
            raise ValueError("acceptance.joint: 'traces' needs traces")
        if self.spread and self.spread.per_request and any(
                len(r) != n or any(len(row) != n for row in r) for r in self.spread.per_request):
            raise ValueError("acceptance.spread.per_request: every matrix must be len(exits) x len(exits)")
        if self.spread and self.spread.per_request and not all(_is_agreement(r) for r in self.spread.per_request):
            k = next(i for i, r in enumerate(self.spread.per_request) if not _is_agreement(r))
            raise ValueError(f"acceptance.spread.per_request[{k}]: must be symmetric with 1 on the diagonal "
                             "(a request's agreement of exits a and b)")
        # the matrix follows from the traces, and is the requests' weighted mean: two answers for one plan otherwise
        A = np.asarray(self.agreement, float)
        if self.traces:
            T = np.asarray(self.traces)  # exit by exit: rows x exits at a time, not rows x exits^2
            _same_matrix(A, np.stack([(T == T[:, [i]]).mean(axis=0) for i in range(n)]), self.exits,
                         "the agreement of its traces")
        if self.spread and self.spread.per_request:
            P = np.asarray(self.spread.per_request, float)
            _same_matrix(A, np.average(P, axis=0, weights=self.spread.weights), self.exits,
                         "the weighted mean of spread.per_request")
        c = self.confidence
        if c is not None:
            nb = len(c.buckets) - 1
            if len(c.share) != n or any(len(r) != nb for r in c.share) or len(c.agreement_given_bucket) != n or any(
                    len(m) != n or any(len(r) != nb for r in m) for m in c.agreement_given_bucket):
                raise ValueError("acceptance.confidence: share / agreement_given_bucket must match exits x buckets")
            if c.top1 is not None and (not self.traces or len(c.top1) != len(self.traces)
                                       or any(len(r) != n for r in c.top1)):
                raise ValueError("acceptance.confidence.top1: one row per trace row, one value per exit")
        return self


def _is_agreement(m: list[list[float]]) -> bool:
    return all(m[i][i] == 1.0 and all(abs(m[i][j] - m[j][i]) <= 1e-9 for j in range(i)) for i in range(len(m)))


class Profile(Strict):
    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="format version; this hispec reads 1")
    name: Name
    description: Annotated[str, AfterValidator(check_no_bidi)] = ""
    hardware: Hardware
    model: ModelShape
    latency: list[LatencyTable] = Field(min_length=1)
    default_tp: int = 1
    default_stack: Name = "compiled"
    workloads: dict[Name, Acceptance] = Field(min_length=1)
    default_workload: str
    paper_default: Plan | None = Field(None, description="the published configuration to compare against (e.g. HiSpec's exits, N_d=2, N_i=4)")
    provenance: dict[str, str | list[str] | dict] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        if self.default_workload not in self.workloads:
            raise ValueError(f"default_workload: {self.default_workload!r} is not one of {sorted(self.workloads)}")
        for name, acc in self.workloads.items():
            self.model.check_context(acc.context, f"workloads.{name}.context")
            if acc.exits[-1] != self.model.num_layers:
                raise ValueError(f"workloads.{name}.exits: must end at the last layer {self.model.num_layers}")
            if acc.fit is not None:
                try:
                    rec = _fit_record(acc.fit)
                    rec.check_model(self.model.num_layers)
                    rec.check_agreement(acc, self.model.num_layers)
                except ValueError as e:
                    raise ValueError(f"workloads.{name}.fit: {e}") from None
        if self.paper_default is not None and self.paper_default.levels[-1] != self.model.num_layers:
            raise ValueError(f"paper_default.levels: must end at the last layer {self.model.num_layers}, "
                             f"got {self.paper_default.levels[-1]}")
        if self.paper_default is not None:  # every optimize prices it: refused here, not there under another name
            pd = self.paper_default
            if pd.mode != "greedy" or pd.adaptive:
                raise ValueError("paper_default: must be a greedy plan without confidence thresholds (the baseline "
                                 f"optimize compares against), got mode {pd.mode!r}"
                                 + (" with confidence thresholds" if pd.adaptive else ""))
            for name, acc in self.workloads.items():
                missing = sorted(set(pd.levels) - set(acc.exits))
                if missing:
                    raise ValueError(f"paper_default.levels: exits {missing} are not measured in workload {name!r}; "
                                     f"allowed exits: {','.join(map(str, acc.exits))}")
        twice = first_repeat((t.tp, t.stack) for t in self.latency)
        if twice:  # table(tp, stack) would take the first and hide the other
            raise ValueError(f"latency: two tables for tp={twice[0]} stack={twice[1]}; one per (tp, stack)")
        for t in self.latency:
            if t.working_set_layers and t.working_set_layers[-1] > self.model.num_layers:
                raise ValueError(f"latency.working_set_layers: must be in [1, {self.model.num_layers}] (model.num_layers)")
        if not any(t.tp == self.default_tp and t.stack == self.default_stack for t in self.latency):
            raise ValueError(f"default_tp: no latency table for default_tp={self.default_tp} default_stack="
                             f"{self.default_stack}; this profile has: {self._tables()}")
        return self

    def table(self, tp: int | None = None, stack: str | None = None) -> LatencyTable:
        tp = self.default_tp if tp is None else tp
        stack = self.default_stack if stack is None else stack
        for t in self.latency:
            if t.tp == tp and t.stack == stack:
                return t
        raise ValueError(f"latency: no table for tp={tp} stack={stack}; this profile has: {self._tables()}")

    def _tables(self) -> str:
        return ", ".join(f"tp={t.tp} stack={t.stack}" for t in self.latency)

    def workload(self, name: str | None = None) -> Acceptance:
        name = self.default_workload if name is None else name
        if name not in self.workloads:
            raise ValueError(f"workload: unknown {name!r}; known: {', '.join(sorted(self.workloads))}")
        return self.workloads[name]

    def check_plan(self, plan: Plan, workload: str | None = None) -> None:
        """Raise ValueError naming the field unless the plan runs on this profile (and the
        simulator can predict it: greedy verification, whose acceptance is exits agreeing)."""
        if plan.mode != "greedy":
            raise ValueError(f"mode: the simulator predicts greedy plans only (acceptance = exits agreeing on the "
                             f"argmax), got {plan.mode!r}; run a sampling plan with hispec-exec")
        plan.check_depth(self.model.num_layers)
        exits = set(self.workload(workload).exits)
        missing = [e for e in plan.levels if e not in exits]
        if missing:
            raise ValueError(f"levels: exits {missing} were not measured; allowed exits: {_ranges(sorted(exits))}")
        if plan.adaptive and (self.workload(workload).confidence is None or self.workload(workload).confidence.top1 is None):
            field = "draft_confidence" if plan.draft_confidence else "escalate_confidence"
            raise ValueError(f"{field}: profile {self.name} has no confidence statistics (top-1 probabilities per "
                             f"position); adaptive plans cannot be evaluated on it")


def _ranges(xs: list[int]) -> str:
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}..{x}")
            start = None
    return ",".join(out)


# --------------------------------------------------------------------------- I/O

def _profiles_dir() -> Path:
    """The shipped profiles: the checkout's profiles/ (editable install), which a wheel
    carries as hispec_sim/profiles/ (pyproject.toml maps it)."""
    here = Path(__file__).resolve().parent
    return here / "profiles" if (here / "profiles").is_dir() else here.parent / "profiles"


PROFILES_DIR = _profiles_dir()


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def resolve_profile_path(name_or_path: str) -> Path:
    """A shipped profile's name (a file or folder of that name in the working folder does
    not hide it: write ./NAME for that), else a path."""
    p = Path(name_or_path)
    name_or_path = str(name_or_path)
    shipped = PROFILES_DIR / f"{name_or_path}.json"
    if p.name == name_or_path and p.suffix != ".json" and shipped.is_file():  # a bare shipped name
        return shipped
    if p.suffix == ".json" or p.exists() or p.is_symlink() or "/" in name_or_path:
        try:
            p.stat()
        except FileNotFoundError:
            if not p.is_symlink():
                raise ValueError(f"profile: no such file {name_or_path!r}") from None
            raise ValueError(f"profile: cannot read {name_or_path!r} (a symbolic link to nothing)") from None
        except OSError as e:  # a loop of symbolic links, a denied folder
            raise ValueError(f"profile: cannot read {name_or_path!r} ({e.strerror})") from None
        return p
    if not shipped.exists():
        raise ValueError(f"profile: unknown {name_or_path!r}; known: {', '.join(known_profiles())}")
    return shipped


MAX_INT_DIGITS = 4300  # Python's own limit for converting text to int (sys.get_int_max_str_digits)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows here (use finite numbers)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is out of the range of finite numbers")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:  # Python refuses to convert it, with advice about sys
        raise ValueError(f"an integer of {len(text.lstrip('-')):,} digits; allowed: at most {MAX_INT_DIGITS:,}")
    return int(text)


def _depth_within(data, limit: int) -> bool:
    """Whether nested lists/objects stay within `limit` levels (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (list, dict)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node)
                         if isinstance(v, (list, dict)))
    return True


def first_repeat(items):
    """The first item that appeared before (None when all differ)."""
    seen: set = set()
    return next((x for x in items if x in seen or seen.add(x)), None)


def _unique_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) < len(pairs):  # json.loads would keep the last silently
        raise ValueError(f"key {first_repeat(k for k, _ in pairs)!r} appears twice in one object")
    return out


def json_type(x) -> str:
    """JSON's name for a parsed value (messages speak JSON, not Python)."""
    if isinstance(x, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(x), "null")


def parse_json_text(text: str, field: str, where: str = "the input"):
    """JSON text -> data, bounded: nesting <= MAX_JSON_DEPTH, finite numbers only, no key
    twice in one object. ValueError naming the field otherwise."""
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno}, column {e.colno}" if "\n" in text.strip() else f"column {e.colno}"
        msg = e.msg.removesuffix(" at")  # "Unterminated string starting at"
        raise ValueError(f"{field}: {where}: malformed JSON ({msg} at {at})") from None
    except RecursionError:
        raise ValueError(f"{field}: {where} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as e:
        raise ValueError(f"{field}: {where}: {e}") from None
    if not _depth_within(data, MAX_JSON_DEPTH):
        raise ValueError(f"{field}: {where} is nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def shown(path) -> str:
    """A path on one line: as given, or quoted with escapes when it holds a newline or another
    character a terminal would not show as such."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def regular_file(path: Path, field: str):
    """os.stat of a regular file (not a folder, FIFO or device, which could block or never
    end a read), or ValueError naming the field."""
    import os
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{field}: no such file {str(path)!r}") from None
    except OSError as e:
        raise ValueError(f"{field}: cannot read {shown(path)} ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{field}: {shown(path)} is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{field}: {shown(path)} is not a regular file")
    return st


def read_text_bounded(path: Path, field: str, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A regular UTF-8 file of at most max_bytes, or ValueError naming the field."""
    path = Path(path)
    st = regular_file(path, field)
    if st.st_size > max_bytes:
        raise ValueError(f"{field}: {shown(path)} is {st.st_size / 2**20:.0f} MiB; at most {max_bytes / 2**20:.0f} MiB allowed")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise ValueError(f"{field}: cannot read {shown(path)} ({e.strerror})") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{field}: {shown(path)} is larger than {max_bytes / 2**20:.0f} MiB")
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not content
    except UnicodeDecodeError as e:
        raise ValueError(f"{field}: {shown(path)} is not UTF-8 text (byte {e.start})") from None


def file_lines(text: str) -> list[str]:
    """The lines of a text file as editors and JSONL count them: split at LF (a CRLF's CR
    dropped) only -- str.splitlines() also splits at form feeds, U+0085 and U+2028, which
    JSON allows raw inside a string."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def _load_json(path: Path, field: str):
    """A bounded JSON file (size, nesting, finite numbers): ValueError naming the field."""
    return parse_json_text(read_text_bounded(path, field), field, str(path))


def _load_object(path: Path, field: str) -> dict:
    data = _load_json(path, field)
    if not isinstance(data, dict):
        raise ValueError(f"{field}: {path} must hold a JSON object, got a JSON {json_type(data)}")
    return data


def validation_message(e: ValidationError, data=None) -> str:
    """The first error of a ValidationError as 'field.path: message' (pydantic's prefixes off).
    Given the data validated, the path is walked through it: a part that is a key or index of
    the data is shown (quoted when it holds control characters), one that is not is pydantic's
    tag of a union member or validator and is left out. Without it, parts holding '[' are
    taken for tags (but an unknown field's own key)."""
    err = e.errors()[0]
    parts, node = [], data
    unknown = err.get("type") == "extra_forbidden"  # the last part is the input's own key
    named = unknown or err.get("type") == "missing"  # ... or the field it lacks: neither is a tag
    for i, x in enumerate(err.get("loc", ())):
        last = named and i == len(err["loc"]) - 1
        if data is not None:
            if isinstance(node, dict) and x in node or isinstance(node, list) and isinstance(x, int) and -len(node) <= x < len(node):
                node = node[x]
            elif not last:
                continue
        elif "[" in str(x) and not last:
            continue
        x = str(x)  # control characters must not reach the terminal; a dot would split the path
        parts.append(x if x.isprintable() and "." not in x else repr(x))
    loc = ".".join(parts)
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if unknown:
        msg = "unknown field (not in the schema; see `hispec-sim schema`)"
    return f"{loc}: {msg}" if loc and not msg.startswith(loc + ":") else msg


def _validated(model, data: dict, field: str, path):
    """model.model_validate(data) in strict mode -- a file's "16" or 16.0 is not the integer
    16 -- a failure naming the field and the file it came from."""
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        raise ValueError(f"{field}: {path}: {validation_message(e, data)}") from None


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    return _validated(Profile, _load_object(path, "profile"), "profile", path)


PLAN_ONLY_FIELDS = frozenset({"levels", "propose", "windows", "draft_confidence", "escalate_confidence"})  # no other output's


def _misspelt_plan_field(data: dict) -> bool:
    """A key that reads like a plan's own (`levles`, `Levels`): a hand-written plan, whose
    missing field is then named."""
    import difflib

    return any(difflib.get_close_matches(str(k).lower(), PLAN_ONLY_FIELDS, n=1, cutoff=0.8) for k in data)


def load_plan(path: str | Path) -> Plan:
    data = _load_object(Path(path), "plan")
    if "levels" not in data:  # what optimize / evaluate print: the plan their --out would write
        named = [k for k in ("adaptive", "best", "plan") if k in data]
        if "plan" in named and len(named) > 1:
            raise ValueError(f"plan: {path} holds {' and '.join(map(repr, named))}; keep the one to run")
        if "adaptive" in named:  # optimize --adaptive: its answer is the best adaptive plan
            data = data["adaptive"].get("best") if isinstance(data["adaptive"], dict) else None
        elif "best" in named:
            data = data["best"]
        if isinstance(data, dict) and "levels" not in data:
            data = data.get("plan", data)
    if not isinstance(data, dict) or not (data.keys() & PLAN_ONLY_FIELDS or _misspelt_plan_field(data)):
        # e.g. a report's or capacity's JSON (which carry `batching`); a plan missing a field is told which below
        raise ValueError(f"plan: {path} holds no plan object (expected {{\"levels\": [...], ...}})")
    return _validated(Plan, data, "plan", path)


def recorded_setting(path: str | Path) -> dict:
    """What optimize's / evaluate's JSON, given as a plan file, records of the setting it was
    scored at (workload, tp, stack, context); {} for a bare plan file."""
    data = _load_object(Path(path), "plan")
    return {} if "levels" in data else {k: data[k] for k in ("workload", "tp", "stack", "context") if k in data}


def check_writable(path: str | Path) -> None:
    """Raise ValueError unless a file can be written at path."""
    import os

    path = Path(path)
    if not path.parent.exists():
        raise ValueError(f"out: folder {path.parent} does not exist")
    if path.is_dir():
        raise ValueError(f"out: {path} is a folder")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"out: folder {path.parent} is not writable")


def file_mode(path: Path) -> int:
    """The permissions a file written at `path` gets: those of the file it replaces (as `>`
    keeps them), else an ordinary new file's under the umask (mkstemp makes 0600)."""
    import os

    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def folder_locked(folder: Path, waiting: str):
    """An exclusive lock on a folder while files in it are re-read and replaced (no lock
    without flock, or on a folder that cannot be opened); prints `waiting` to stderr when
    another command holds it."""
    import os
    import sys

    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # pragma: no cover
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: a temp file in the same folder, then rename."""
    import os
    import tempfile

    path = Path(path)
    if path.is_symlink():  # write where the link points (as a shell's `>` does), keeping the link
        path = Path(os.path.realpath(path))
    check_writable(path)
    try:
        # a short name: any name the file system takes must leave room for the temp file's
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:32]}.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"out: cannot write to {path.parent} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # what every reader here decodes, whatever the locale
            f.write(text)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a file-size limit: name the output, not the temp file
            raise ValueError(f"out: cannot write {path} ({e.strerror or e})") from None
        raise


def save_profile(profile: Profile, path: str | Path) -> None:
    write_atomic(path, profile.model_dump_json(indent=1, exclude_none=True) + "\n")


def save_plan(plan: Plan, path: str | Path) -> None:
    write_atomic(path, plan.model_dump_json(indent=2) + "\n")


# --------------------------------------------------------------------------- serving
# One description of traffic and of the serving limits, shared by `hispec-exec serve`
# (which runs it) and `hispec-sim serve` / `capacity` (which simulate it).

MAX_REQUESTS = 1_000_000


TINY_SIGMA = 1e-9  # a lognormal below it draws rint(median) alone: near 1e-16, exp(sigma z) rounds to 1 and rint
# meets a half-integer median's tie, which the continuous formula in traffic.exceeds does not see


class LengthDist(Strict):
    """A distribution of token counts (prompt or output length), clipped to [min, max].

    fixed: `value`; uniform: integers in [low, high]; lognormal: exp(N(log(median), sigma));
    empirical: draw uniformly from `values`.
    """

    family: Literal["fixed", "uniform", "lognormal", "empirical"] = "fixed"
    value: int | None = Field(None, ge=1, le=1_000_000)
    low: int | None = Field(None, ge=1, le=1_000_000)
    high: int | None = Field(None, ge=1, le=1_000_000)
    median: float | None = Field(None, gt=0, le=1_000_000, allow_inf_nan=False)
    sigma: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    values: list[int] | None = Field(None, min_length=1, max_length=1_000_000)
    min: int = Field(1, ge=1, le=1_000_000)
    max: int = Field(1_000_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _params(self) -> "LengthDist":
        need = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma"),
                "empirical": ("values",)}[self.family]
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{self.family} needs {', '.join(missing)}")
        if self.family == "uniform" and self.high < self.low:
            raise ValueError("uniform: high must be >= low")
        if self.values is not None and any(v < 1 for v in self.values):
            raise ValueError("values: every length must be >= 1")
        if self.max < self.min:
            raise ValueError("max: must be >= min")
        if self.family == "fixed" and not self.min <= self.value <= self.max:
            raise ValueError(f"value: a fixed length {self.value} outside its own min..max {self.min}..{self.max}")
        lo, hi = {"uniform": (self.low, self.high), "empirical": (min(self.values or [1]), max(self.values or [1]))}.get(
            self.family, (self.min, self.max))
        if self.family == "lognormal" and self.sigma < TINY_SIGMA:  # it draws its median alone, as `upper` says
            lo = hi = round(self.median)
        if hi < self.min or lo > self.max:  # every draw clipped to one bound: a fixed length in disguise
            raise ValueError(f"{self.family}: every length it draws ({lo}..{hi}) lies outside its own min..max "
                             f"{self.min}..{self.max}")
        return self

    @property
    def upper(self) -> int:
        """The longest length it can draw."""
        if self.family == "lognormal" and self.sigma < TINY_SIGMA:  # every draw the median, rounded as draw_lengths does
            raw = round(self.median)
        else:
            raw = {"fixed": self.value, "uniform": self.high, "lognormal": self.max,
                   "empirical": max(self.values or [1])}[self.family]
        return max(self.min, min(self.max, raw))

    @classmethod
    def parse(cls, text: str, field: str) -> "LengthDist":
        """CLI form: '128' (fixed), 'uniform:32:512', 'lognormal:200:0.8' (median, sigma),
        'empirical:12,40,300'; an optional ':min=..' / ':max=..' suffix clips."""
        parts = text.split(":")
        twice = first_repeat(p.split("=", 1)[0] for p in parts if "=" in p)
        if twice:
            raise ValueError(f"{field}: {twice}= given twice in {text!r}")
        try:
            kw: dict = {}
            while len(parts) > 1 and "=" in parts[-1]:
                k, v = parts.pop().split("=", 1)
                if k not in ("min", "max"):
                    raise ValueError
                kw[k] = strict_int(v)
            if len(parts) == 1:
                return cls(family="fixed", value=strict_int(parts[0]), **kw)
            fam, args = parts[0], parts[1:]
            if fam == "uniform" and len(args) == 2:
                return cls(family=fam, low=strict_int(args[0]), high=strict_int(args[1]), **kw)
            if fam == "lognormal" and len(args) == 2:
                return cls(family=fam, median=strict_float(args[0]), sigma=strict_float(args[1]), **kw)
            if fam == "empirical" and len(args) == 1:
                return cls(family=fam, values=[strict_int(x) for x in args[0].split(",")], **kw)
        except (ValueError, TypeError) as e:
            if hasattr(e, "errors"):  # pydantic: name the parameter ("sigma: Input should be ...")
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                detail = (f"{where}: " if where and err["type"] != "value_error" else "") + err["msg"].removeprefix("Value error, ")
            else:
                detail = "malformed"
            raise ValueError(f"{field}: {detail} in {text!r}; expected N, uniform:LO:HI, lognormal:MEDIAN:SIGMA "
                             f"or empirical:N,N,... (lengths >= 1)") from None
        raise ValueError(f"{field}: unknown form {text!r}; expected N, uniform:LO:HI, lognormal:MEDIAN:SIGMA "
                         f"or empirical:N,N,...")


class Traffic(Strict):
    """Generated traffic: `requests` arrivals at mean rate `qps` (Poisson, or gamma
    inter-arrival times with coefficient of variation `cv`), lengths drawn independently."""

    arrival: Literal["poisson", "gamma"] = "poisson"
    qps: float = Field(gt=0, le=1e6, allow_inf_nan=False, description="mean arrival rate, requests per second")
    cv: float = Field(1.0, gt=0, le=100, allow_inf_nan=False, description="gamma: coefficient of variation of inter-arrival times")
    requests: int = Field(64, ge=1, le=MAX_REQUESTS)
    prompt_len: LengthDist = Field(default_factory=lambda: LengthDist(family="fixed", value=64))
    output_len: LengthDist = Field(default_factory=lambda: LengthDist(family="fixed", value=64))
    seed: int = Field(0, ge=0, le=2**63 - 1)


class Request(Strict):
    """One line of a JSONL trace: arrival time, the prompt (text, token ids, or a token
    count) and how many tokens to generate."""

    arrival_s: float = Field(ge=0, le=1e9, allow_inf_nan=False)
    prompt: str | None = None
    prompt_tokens: Int | list[Int] | None = Field(None, description="token ids, or a prompt length in tokens")
    max_new_tokens: Int = Field(ge=1, le=MAX_REQUEST_TOKENS)

    @model_validator(mode="after")
    def _one_prompt(self) -> "Request":
        if (self.prompt is None) == (self.prompt_tokens is None):
            raise ValueError("give exactly one of prompt (text) or prompt_tokens")
        if isinstance(self.prompt_tokens, int) and not 1 <= self.prompt_tokens <= MAX_REQUEST_TOKENS:
            raise ValueError(f"prompt_tokens: a prompt length must be in [1, {MAX_REQUEST_TOKENS}]")
        if isinstance(self.prompt_tokens, list) and not 1 <= len(self.prompt_tokens) <= MAX_REQUEST_TOKENS:
            raise ValueError(f"prompt_tokens: between 1 and {MAX_REQUEST_TOKENS} token ids")
        if isinstance(self.prompt_tokens, list) and not 0 <= min(self.prompt_tokens) <= max(self.prompt_tokens) <= MAX_TOKEN_ID:
            raise ValueError(f"prompt_tokens: token ids must be in [0, {MAX_TOKEN_ID}]")
        if self.prompt is not None and not self.prompt.strip():  # as generate and a prompts file judge it
            raise ValueError("prompt: empty (or whitespace only)")
        if self.prompt is not None:
            try:  # JSON's "\ud800" decodes to a lone surrogate, which no tokenizer can encode
                self.prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("prompt: not valid Unicode (a lone surrogate escape such as \\ud800)") from None
        if self.prompt is not None and len(self.prompt.encode("utf-8")) > MAX_REQUEST_TOKENS:
            raise ValueError(f"prompt: at most {MAX_REQUEST_TOKENS:,} bytes of UTF-8 (the simulator counts a text prompt's "
                             "bytes as its tokens)")
        return self

    @property
    def prompt_len(self) -> int | None:
        """Length in tokens when known without a tokenizer."""
        if isinstance(self.prompt_tokens, int):
            return self.prompt_tokens
        if isinstance(self.prompt_tokens, list):
            return len(self.prompt_tokens)
        return None


class ServeLimits(Strict):
    """What a replica admits and how it prefills.

    A request is admitted (FIFO) when the batch has fewer than `max_batch` sequences and
    the KV cache can hold its prompt + max_new_tokens (+ the plan's speculation overshoot)
    on top of what the running requests reserved; otherwise it waits. `prefill`:
    'separate' = the prompts admitted in an iteration run in ONE forward before the decode
    step (the running sequences wait: prefill stalls decoding); 'chunked' = each iteration's
    prefill forward carries at most `prefill_chunk` prompt tokens (admitted prompts in FIFO
    order, a long one split over iterations), so a decode step waits for one chunk at most
    and a request joins the batch once its prompt is cached. A prefilling request holds its
    slot of max_batch and its KV reservation from admission on.
    """

    max_batch: int = Field(16, ge=1, le=4096)
    kv_tokens: int | None = Field(None, ge=1, le=10**9, description="KV capacity in tokens over all sequences (None: unbounded)")
    prefill: Literal["separate", "chunked"] = "separate"
    prefill_chunk: int | None = Field(None, ge=1, le=10**6, description="chunked: most prompt tokens per iteration's "
                                      "prefill forward")
    slo_ttft_ms: float | None = Field(None, gt=0, allow_inf_nan=False, description="p99 time-to-first-token SLO; "
                                      "also each request's TTFT SLO of goodput")
    slo_tbt_ms: float | None = Field(None, gt=0, allow_inf_nan=False, description="p99 time-between-tokens SLO, pooled "
                                     "over every token gap (as capacity judges a load)")
    slo_tpot_ms: float | None = Field(None, gt=0, allow_inf_nan=False, description="each request's mean time per output "
                                      "token SLO of goodput (None: slo_tbt_ms)")

    @model_validator(mode="after")
    def _chunk_with_chunked(self):
        if (self.prefill == "chunked") != (self.prefill_chunk is not None):
            raise ValueError("prefill_chunk: a chunk size (1..1000000 tokens) goes with prefill 'chunked', and only with it")
        return self

    def prefill_words(self) -> str:
        return f"prefill in chunks of <= {self.prefill_chunk} tokens" if self.prefill_chunk else "prefill whole"

    @property
    def tpot_slo(self) -> float | None:
        return self.slo_tpot_ms if self.slo_tpot_ms is not None else self.slo_tbt_ms


class RequestMetrics(Strict):
    """What one served request saw. Times in ms from its arrival. A token is emitted when
    the step that commits it ends (speculation commits several at once: their gaps are 0)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    queue_ms: float = Field(description="arrival to admission")
    ttft_ms: float = Field(description="arrival to the first generated token")
    e2e_ms: float = Field(description="arrival to the last generated token")
    tbt_ms: list[float] = Field(description="gaps between consecutive generated tokens")
