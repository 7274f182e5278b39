"""The one schema shared by the simulator and the executor: plans and profiles.

A plan is a chain of exit layers (1-based, increasing, the last one is the full model).
A profile is hardware + model shape + latency tables + acceptance statistics, and every
figure in it carries a `Source`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- plan


class Plan(Strict):
    """A chain of levels over exit layers l_1 < ... < l_k = L.

    Level 1 drafts `propose` tokens per round from exit l_1; level j (1 < j < k) checks
    what the level below accumulated once it holds >= `windows[j-2]` tokens; level k (the
    full model) commits. [L] is autoregressive, [E, L] single-level self-speculation.
    """

    levels: list[int] = Field(min_length=1, description="exit layers, 1-based, increasing; the last is the full model")
    propose: int = Field(1, ge=1, le=64, description="drafts per round at level 1")
    windows: list[int] = Field(default_factory=list, description="one window per intermediate level")
    mode: Literal["greedy", "sampling"] = "greedy"
    batch: int = Field(1, ge=1, le=4096, description="sequences decoded in lockstep")
    batching: Literal["ragged", "synchronous"] = Field(
        "ragged",
        description="batch > 1 (serving): 'ragged' = in one step every sequence runs the layers its own next "
        "operation needs (drafting sequences share layers 1..l_1, only those whose level-j check is due go on "
        "through l_{j-1}+1..l_j); 'synchronous' = every sequence of the batch does the same operation each step "
        "(checks carry every sequence's buffer, padded)",
    )

    @field_validator("levels")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("exit layers must be >= 1")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("exit layers must be strictly increasing")
        return v

    @field_validator("windows")
    @classmethod
    def _windows_positive(cls, v: list[int]) -> list[int]:
        if any(w < 1 or w > 256 for w in v):
            raise ValueError("every window must be in [1, 256]")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "Plan":
        k = len(self.levels)
        if len(self.windows) != max(k - 2, 0):
            raise ValueError(f"windows: a {k}-level chain needs {max(k - 2, 0)} window(s), got {len(self.windows)}")
        if k == 1 and self.propose != 1:
            self.propose = 1  # autoregressive has no drafts; normalise so equal plans compare equal
        return self

    @property
    def depth(self) -> int:
        return len(self.levels)

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
    name: str
    gpus: int = Field(1, ge=1)
    hbm_gb: float | None = Field(None, gt=0)
    hbm_gbps: float | None = Field(None, gt=0)
    bf16_tflops: float | None = Field(None, gt=0)
    source: Source


class ModelShape(Strict):
    name: str
    num_layers: int = Field(ge=1)
    hidden: int = Field(ge=1)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    ffn: int = Field(ge=1)
    vocab: int = Field(ge=2)
    source: Source


def _finite_nonneg(values, field: str):
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{field}: must be finite and >= 0, got {v}")


class AttentionKernel(Strict):
    """Measured attention kernel of ONE decoder layer (softmax(QK^T)V over the KV cache),
    kept apart from `LatencyTable.layer_ms` (whose context axis then stays unused).

    decode_ms[i][j]: one decode step of decode_batch[i] sequences, one new token each, at
    mean KV length decode_context[j] (the whole batch: one kernel launch);
    prefill_ms[i][j]: prefill of prefill_tokens[i] new tokens of one sequence after
    prefill_context[j] cached ones (causal among the new tokens). Grids are interpolated
    linearly and extrapolated linearly from the last two points (floored at `floor_ms`).
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


class LatencyTable(Strict):
    """Latency of one serving configuration (tensor-parallel degree x serving stack).

    layer_ms[i][j]: time of ONE decoder layer (attention kernel and all-reduces included)
    at batch 1, with tokens[i] new tokens after contexts[j] cached ones. At batch B the
    cost model reads the linear part at B x tokens and adds B times one sequence's
    attention increment (latency.batched_layer_ms): each sequence reads its own cache.
    Values between grid points are interpolated linearly, beyond the grid extrapolated
    linearly from the last two points.
    """

    tp: int = Field(1, ge=1, description="tensor-parallel degree")
    stack: str = Field("compiled", description="serving stack, e.g. compiled or hf_eager")
    tokens: list[int] = Field(min_length=1)
    contexts: list[int] = Field(min_length=1)
    layer_ms: list[list[float]]
    head_ms: list[float] = Field(description="final norm + LM head over tokens[i] tokens")
    overhead_ms: float = Field(0.0, ge=0, description="fixed cost of every forward (launch, sampling, host)")
    layer_overhead_ms: float = Field(0.0, ge=0, description="host cost per layer per forward (eager stacks)")
    verify_overhead_ms: float = Field(0.0, ge=0, description="extra fixed cost of a verification forward (compare, crop)")
    source: Source
    notes: dict[str, str] = Field(default_factory=dict)
    attention: AttentionKernel | None = Field(
        None, description="measured attention kernel (or a measured floor); None: the attention in layer_ms is used as is")

    @model_validator(mode="after")
    def _grid(self) -> "LatencyTable":
        for name, grid in (("tokens", self.tokens), ("contexts", self.contexts)):
            if any(b <= a for a, b in zip(grid, grid[1:])) or grid[0] < 0:
                raise ValueError(f"latency.{name}: must be increasing and >= 0")
        if len(self.layer_ms) != len(self.tokens) or any(len(r) != len(self.contexts) for r in self.layer_ms):
            raise ValueError("latency.layer_ms: must be len(tokens) x len(contexts)")
        if len(self.head_ms) != len(self.tokens):
            raise ValueError("latency.head_ms: must have one value per tokens entry")
        _finite_nonneg([v for r in self.layer_ms for v in r], "latency.layer_ms")
        _finite_nonneg(self.head_ms, "latency.head_ms")
        return self

    @property
    def key(self) -> str:
        return f"tp{self.tp}/{self.stack}"


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
        if self.per_request:
            for r in self.per_request:
                for row in r:
                    if any(not (math.isfinite(v) and 0.0 <= v <= 1.0) for v in row):
                        raise ValueError("spread.per_request: values must be in [0, 1]")
            if self.weights is not None and len(self.weights) != len(self.per_request):
                raise ValueError("spread.weights: one weight per request")
        return self


class Acceptance(Strict):
    """Greedy agreement statistics of one workload.

    agreement[a][b] = P(argmax of exit exits[a] == argmax of exit exits[b]) at a position,
    given the committed prefix. traces (optional): per measured position, the argmax token
    of every exit in `exits` (rows = positions, in order; `trace_starts` marks where each
    prompt's positions begin) for Monte-Carlo replay and exact joint rates.
    """

    exits: list[int] = Field(min_length=1)
    agreement: list[list[float]]
    context: int = Field(512, ge=0, description="mean context length (prompt + half the generation)")
    traces: list[list[int]] | None = None
    trace_starts: list[int] | None = None
    joint: Literal["independent", "traces"] = Field(
        "independent",
        description="how conditional rates of a chain are obtained: 'independent' = agreement "
        "events of consecutive levels are independent (exact under the depth-Markov model a "
        "published profile is fitted with); 'traces' = empirical joint from traces",
    )
    source: Source
    fit: dict | None = Field(None, description="fitted curve, its inputs and residuals, when fitted")
    spread: AcceptanceSpread | None = Field(None, description="per-request distribution of the rates (None: every request at the mean)")

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
        if self.traces is not None:
            if any(len(r) != n for r in self.traces):
                raise ValueError("acceptance.traces: rows must have one token per exit")
        if self.joint == "traces" and not self.traces:
            raise ValueError("acceptance.joint: 'traces' needs traces")
        if self.spread and self.spread.per_request and any(
                len(r) != n or any(len(row) != n for row in r) for r in self.spread.per_request):
            raise ValueError("acceptance.spread.per_request: every matrix must be len(exits) x len(exits)")
        return self


class Profile(Strict):
    schema_version: int = SCHEMA_VERSION
    name: str
    description: str = ""
    hardware: Hardware
    model: ModelShape
    latency: list[LatencyTable] = Field(min_length=1)
    default_tp: int = 1
    default_stack: str = "compiled"
    workloads: dict[str, Acceptance] = Field(min_length=1)
    default_workload: str
    paper_default: Plan | None = Field(None, description="the published configuration to compare against (e.g. HiSpec's exits, N_d=2, N_i=4)")
    provenance: dict[str, str | list[str] | dict] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        if self.default_workload not in self.workloads:
            raise ValueError(f"default_workload: {self.default_workload!r} is not one of {sorted(self.workloads)}")
        for name, acc in self.workloads.items():
            if acc.exits[-1] != self.model.num_layers:
                raise ValueError(f"workloads.{name}.exits: must end at the last layer {self.model.num_layers}")
        self.table(self.default_tp, self.default_stack)
        return self

    def table(self, tp: int | None = None, stack: str | None = None) -> LatencyTable:
        tp = self.default_tp if tp is None else tp
        stack = self.default_stack if stack is None else stack
        for t in self.latency:
            if t.tp == tp and t.stack == stack:
                return t
        have = ", ".join(f"tp={t.tp} stack={t.stack}" for t in self.latency)
        raise ValueError(f"latency: no table for tp={tp} stack={stack}; this profile has: {have}")

    def workload(self, name: str | None = None) -> Acceptance:
        name = self.default_workload if name is None else name
        if name not in self.workloads:
            raise ValueError(f"workload: unknown {name!r}; known: {', '.join(sorted(self.workloads))}")
        return self.workloads[name]

    def check_plan(self, plan: Plan, workload: str | None = None) -> None:
        """Raise ValueError naming the field unless the plan runs on this profile."""
        plan.check_depth(self.model.num_layers)
        exits = set(self.workload(workload).exits)
        missing = [e for e in plan.levels if e not in exits]
        if missing:
            raise ValueError(f"levels: exits {missing} were not measured; allowed exits: {_ranges(sorted(exits))}")


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

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def known_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def resolve_profile_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists() or "/" in name_or_path:
        if not p.exists():
            raise ValueError(f"profile: no such file {name_or_path!r}")
        return p
    candidate = PROFILES_DIR / f"{name_or_path}.json"
    if not candidate.exists():
        raise ValueError(f"profile: unknown {name_or_path!r}; known: {', '.join(known_profiles())}")
    return candidate


def _load_json(path: Path, field: str):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{field}: malformed JSON in {path} ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise ValueError(f"{field}: cannot read {path} ({e.strerror})") from None


def load_profile(name_or_path: str) -> Profile:
    path = resolve_profile_path(name_or_path)
    return Profile.model_validate(_load_json(path, "profile"))


def load_plan(path: str | Path) -> Plan:
    data = _load_json(Path(path), "plan")
    if isinstance(data, dict) and "levels" not in data:  # accept what optimize / evaluate print
        if isinstance(data.get("best"), dict):
            data = data["best"]
        data = data.get("plan", data)
    return Plan.model_validate(data)


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


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: a temp file in the same folder, then rename."""
    import os
    import tempfile

    path = Path(path)
    check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"out: cannot write to {path.parent} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_profile(profile: Profile, path: str | Path) -> None:
    write_atomic(path, profile.model_dump_json(indent=1, exclude_none=True) + "\n")


def save_plan(plan: Plan, path: str | Path) -> None:
    write_atomic(path, plan.model_dump_json(indent=2) + "\n")


# --------------------------------------------------------------------------- serving
# One description of traffic and of the serving limits, shared by `hispec-exec serve`
# (which runs it) and `hispec-sim serve` / `capacity` (which simulate it).

MAX_REQUESTS = 1_000_000


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
        return self

    @classmethod
    def parse(cls, text: str, field: str) -> "LengthDist":
        """CLI form: '128' (fixed), 'uniform:32:512', 'lognormal:200:0.8' (median, sigma),
        'empirical:12,40,300'; an optional ':min=..' / ':max=..' suffix clips."""
        parts = text.split(":")
        try:
            kw: dict = {}
            while len(parts) > 1 and "=" in parts[-1]:
                k, v = parts.pop().split("=", 1)
                if k not in ("min", "max"):
                    raise ValueError
                kw[k] = int(v)
            if len(parts) == 1:
                return cls(family="fixed", value=int(parts[0]), **kw)
            fam, args = parts[0], parts[1:]
            if fam == "uniform" and len(args) == 2:
                return cls(family=fam, low=int(args[0]), high=int(args[1]), **kw)
            if fam == "lognormal" and len(args) == 2:
                return cls(family=fam, median=float(args[0]), sigma=float(args[1]), **kw)
            if fam == "empirical" and len(args) == 1:
                return cls(family=fam, values=[int(x) for x in args[0].split(",")], **kw)
        except (ValueError, TypeError) as e:
            detail = e.errors()[0]["msg"] if hasattr(e, "errors") else "malformed"
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
    prompt_tokens: int | list[int] | None = Field(None, description="token ids, or a prompt length in tokens")
    max_new_tokens: int = Field(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_prompt(self) -> "Request":
        if (self.prompt is None) == (self.prompt_tokens is None):
            raise ValueError("give exactly one of prompt (text) or prompt_tokens")
        if isinstance(self.prompt_tokens, int) and self.prompt_tokens < 1:
            raise ValueError("prompt_tokens: a prompt length must be >= 1")
        if isinstance(self.prompt_tokens, list) and (not self.prompt_tokens or min(self.prompt_tokens) < 0):
            raise ValueError("prompt_tokens: token ids must be >= 0, at least one")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt: empty")
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
    'separate' = an admitted request's prompt runs in its own forward(s) before it joins
    the decode batch (the running sequences wait: prefill stalls decoding).
    """

    max_batch: int = Field(16, ge=1, le=4096)
    kv_tokens: int | None = Field(None, ge=1, le=10**9, description="KV capacity in tokens over all sequences (None: unbounded)")
    prefill: Literal["separate"] = "separate"
    slo_ttft_ms: float | None = Field(None, gt=0, allow_inf_nan=False)
    slo_tbt_ms: float | None = Field(None, gt=0, allow_inf_nan=False)


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
