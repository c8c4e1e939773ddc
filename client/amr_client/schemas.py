"""The wire contract of amr-sd: every request and response field, in one place.

The server imports these models unchanged, so client and server cannot disagree about a field.
This module needs only pydantic: a trainer installs the SDK without torch or vLLM.

Index convention: `advantages[t]` (and `cig[t]`, `gated[t]`, `*_logprobs[t]`) belongs to response
token `token_ids[t]`; there is no leading sentinel and no shift.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

# Bounds on what one request may carry; anything larger is a client bug, not a workload.
MAX_TEXT_CHARS = 200_000
MAX_TOKENS_PER_SEQUENCE = 131_072


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------
# The server validates strictly. The SDK validates laxly, so that numpy and torch numbers (np.int64
# token ids, a 0-d tensor reward) pass; but lax parsing also makes True a 1 and "1" a 1.0, and a
# verdict or a text sent as a reward is a trainer's bug to report, not a reward to score. These
# checks refuse both in either mode, and say why.


def _not_a_number(value: Any) -> str | None:
    """What `value` is when it must not be read as a number (a bool, a string), else None."""
    # numpy's and torch's booleans are no subclass of bool; their dtype names them.
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        return "a bool"
    if isinstance(value, (str, bytes)):
        return "a string"
    return None


def _refusal(kind: str, what: str) -> PydanticCustomError:
    return PydanticCustomError(f"{kind}_type", "Input should be {article} {kind}, not {what}",
                               {"article": "an" if kind == "integer" else "a", "kind": kind, "what": what})


def _scalar(kind: str):
    def check(value: Any) -> Any:
        what = _not_a_number(value)
        if what is not None:
            raise _refusal(kind, what)
        return value
    return BeforeValidator(check)


# The context under which the SDK validates laxly; strict validation (the server's) refuses bools
# and strings in these lists itself, at no per-item Python cost.
LAX_NUMBERS = {"lax_numbers": True}


def _items(kind: str, plain: tuple[type, ...]):
    # One check per list rather than one Python call per element: token_ids may hold 100k items.
    def check(values: Any, info: ValidationInfo) -> Any:
        if not (info.context or {}).get("lax_numbers"):
            return values
        if not isinstance(values, (list, tuple)) or all(type(v) in plain for v in values):
            return values
        for i, value in enumerate(values):
            what = _not_a_number(value)
            if what is not None:
                # Raised as a ValidationError so that the error names the item: token_ids[7].
                raise ValidationError.from_exception_data(kind, [InitErrorDetails(
                    type=_refusal(kind, what), loc=(i,), input=value)])
        return values
    return BeforeValidator(check)


Number = Annotated[float, _scalar("number")]
Integer = Annotated[int, _scalar("integer")]
# Per-element bound, so an error names the index: groups[0].rollouts[1].token_ids[7].
TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], _items("integer", (int,))]
Numbers = Annotated[list[float], _items("number", (float, int))]


class _Strict(BaseModel):
    # Unknown fields are errors: a misspelt `refelction_override` must not be silently ignored.
    # No type coercion either: "3" is not a step and 7.0 is not a token id; a trainer that sends
    # them has a bug the service must report, not guess around.
    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------


class ScoringConfig(_Strict):
    """Every AMR-SD hyper-parameter. Defaults follow the paper where it gives one; "(ours)" marks
    a value the paper leaves open. A request's `config` overrides only the fields it sets."""

    # > Parameters that control the base (GRPO) advantage
    success_threshold: Number = Field(
        1.0, description="A rollout is correct when reward >= this, unless it sets `correct`. Paper: 1.0.")
    norm_by_std: bool = Field(
        True, description="A_i = (r_i - mean) / (std + std_eps); false gives A_i = r_i - mean. Paper: true (GRPO).")
    std_unbiased: bool = Field(
        True, description="Use the unbiased (n-1) standard deviation. Paper: true.")
    std_eps: Number = Field(
        1e-6, ge=0, le=1, description="ε added to the std. (ours): 1e-6 as in verl; set 1e-4 to match TRL's GRPOTrainer exactly.")

    # > Parameters that control the gate (docs/method.md step 8)
    lambda_pos: Number = Field(
        0.2, ge=0, le=10, description="λ: scale of the bonus on tokens a hint makes more likely (A_i > 0). Paper: 0.2.")
    gamma_neg: Number = Field(
        0.1, ge=0, le=10, description="γ: scale of the blame on tokens a critique makes less likely (A_i < 0). Paper: 0.1 (2:1 with λ).")
    tau_pos: Number = Field(
        1.0, ge=0, description="τ+: CIG margin (nats) below which a positive token gets no bonus. (ours): 1.0; calibrate for a 5-15 % gate rate.")
    tau_neg: Number = Field(
        1.0, ge=0, description="τ-: CIG margin (nats) below which a negative token gets no blame. (ours): 1.0.")
    kappa: Number = Field(
        5.0, gt=0, le=100, description="κ: CIG is clipped to [-κ, κ] before the gate. Paper: 5.")
    cig_correction: Literal["none", "student_trend"] = Field(
        "none", description="(ours) \"student_trend\" removes, per rollout, CIG's linear trend on the student's logprob before the gate (docs/method.md \"Off-policy rollouts\"): for stale or replayed rollouts, where a token the policy would not write gets a positive CIG from any teacher block. \"none\" is the paper's CIG. Default: none (on the policy's own fresh samples it lowered a correct critique's step localisation, docs/fidelity.md).")
    gate_rate_target: Annotated[float | None, _scalar("number")] = Field(
        None, gt=0, lt=1, description="(ours) Calibrated gate: when set, τ+ and τ- are chosen per request so that about this share of each branch's gateable tokens is gated (τ+ the (1 - rate) quantile of the hints' CIG, τ- that of the critiques' -CIG, never below 0), replacing tau_pos and tau_neg. Streamed groups then all arrive once the whole request is scored. Default: null (fixed τ).")

    # > Parameters that control the anneal schedule (docs/method.md step 9)
    schedule: Literal["linear", "cosine", "exponential", "constant"] = Field(
        "linear", description="Anneal weight w(u). Paper: linear (w = 1 - u); the others are (ours).")
    decay_steps: Integer = Field(
        50, ge=1, description="T_decay: global steps from warm-up end until w reaches 0. Paper: 50.")
    warmup_steps: Integer = Field(
        0, ge=0, description="Global steps at full weight before decay starts. Paper: 0.")
    exp_k: Number = Field(
        5.0, gt=0, le=100, description="Rate k of the exponential schedule e^(-k u). (ours): 5.")

    # > Parameters that control reflection writing and filtering (docs/method.md steps 4-5)
    max_reflection_tokens: Integer = Field(
        128, ge=1, le=1024, description="Token budget of a reflection; a longer one is rejected. Paper: 128.")
    reflection_temperature: Number = Field(
        0.0, ge=0, le=2, description="Temperature of the first reflection attempt. Paper: 0 (greedy).")
    retry_temperature: Number = Field(
        0.7, ge=0, le=2, description="Temperature of retries after a rejected reflection. (ours): 0.7.")
    max_retries: Integer = Field(
        2, ge=0, le=5, description="Extra attempts after a rejected reflection before falling back to GRPO. (ours): 2.")
    ngram_overlap: Integer = Field(
        8, ge=2, le=64, description="Reject a reflection sharing a run of this many words (letters and digits; punctuation and operators are not words) with a peer, the reference or (for a hint) the rollout. Words, not tokens: under a tokenizer that writes one digit per token one copied equation is 12 tokens. (ours): 8.")
    reflection_template: Literal["v1", "v2"] = Field(
        "v2", description="(ours) Writer template version (docs/method.md \"Reflection templates\"). v2: a critique writes the first wrong step out as the accepted attempt computes it, shown where the two first differ; a hint writes out the step easiest to get wrong. v1: METHOD's templates (the kind of mistake, no values). Cached texts are kept per version. Default: v2.")
    allow_reference_in_writer: bool = Field(
        False, description="Show the reference solution to the reflection writer. (ours): false.")


# --------------------------------------------------------------------------------------------
# Request
# --------------------------------------------------------------------------------------------


class Message(_Strict):
    role: str = Field(..., min_length=1, max_length=32, description="Chat role: system, user, assistant, ...")
    content: str = Field(..., max_length=MAX_TEXT_CHARS)


class Prompt(_Strict):
    """The prompt as the policy saw it: chat `messages` or raw `text` (exactly one)."""

    messages: list[Message] | None = Field(
        None, min_length=1, max_length=256,
        description="Chat messages; the reflection is appended to the last user message for the teacher.")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="Raw prompt text for a model without a chat template.")
    prompt_token_ids: TokenIds | None = Field(
        None, min_length=1, max_length=MAX_TOKENS_PER_SEQUENCE,
        description="Exactly the prompt ids the policy saw. When given, the student pass uses them "
                    "instead of rendering `messages`/`text`.")

    @model_validator(mode="after")
    def _one_form(self) -> "Prompt":
        if (self.messages is None) == (self.text is None):
            raise ValueError("give exactly one of `messages` or `text`")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("`messages` needs a user message: the reflection is appended to the last one")
        return self


class Reference(_Strict):
    answer: str | None = Field(None, max_length=MAX_TEXT_CHARS,
                               description="Reference final answer; used only by the leak filter.")
    solution: str | None = Field(None, max_length=MAX_TEXT_CHARS,
                                 description="Reference solution; reaches the writer only with allow_reference_in_writer.")


class Rollout(_Strict):
    token_ids: TokenIds = Field(
        ..., min_length=1, max_length=MAX_TOKENS_PER_SEQUENCE,
        description="The response token ids as sampled: the source of truth, never re-tokenised.")
    reward: Number = Field(..., description="Verifier reward r_i.")
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS,
                             description="Response text for the reflection writer; decoded from token_ids when absent.")
    correct: bool | None = Field(None, description="Verifier verdict; default reward >= success_threshold.")
    feedback: str | None = Field(None, max_length=MAX_TEXT_CHARS, description="Verifier feedback text, shown to the critique writer.")
    student_logprobs: Numbers | None = Field(
        None, description="The trainer's own log π(y_t | x, y_<t), one per token: skips the student pass. "
                          "Trainer/vLLM numeric differences then enter CIG.")
    reflection_override: str | None = Field(
        None, max_length=MAX_TEXT_CHARS,
        description="Use this reflection text instead of generating one (ablations). It is not filtered.")

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("reward must be a finite number")
        return v

    @field_validator("student_logprobs")
    @classmethod
    def _logprobs_match_tokens(cls, lp: list[float] | None, info: ValidationInfo) -> list[float] | None:
        tokens = info.data.get("token_ids")
        if lp is None or tokens is None:
            return lp
        if len(lp) != len(tokens):
            raise ValueError(f"has {len(lp)} values for {len(tokens)} token_ids")
        bad = next((t for t, v in enumerate(lp) if math.isnan(v) or v > 1e-3), None)
        if bad is not None:
            raise ValueError(f"value {lp[bad]} at index {bad} is not a log-probability")
        return lp


class Group(_Strict):
    prompt: Prompt
    rollouts: list[Rollout] = Field(..., min_length=1, max_length=1024,
                                    description="The G responses sampled for this prompt.")
    reference: Reference | None = None


class ReturnSwitches(_Strict):
    cig: bool = Field(False, description="Add per-token `cig` (clipped) and `gated`.")
    logprobs: bool = Field(False, description="Add per-token `student_logprobs` and `teacher_logprobs`.")
    reflections: bool = Field(True, description="Add the per-rollout `reflection` record.")


# A label names one set of weights for good: the reflection cache is keyed by it.
VersionLabel = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+@-]*$")]
CheckpointPath = Annotated[str, Field(min_length=1, max_length=4096)]


class PolicyRef(_Strict):
    """Which policy scores a request: reflections and both scoring passes use it.

    - absent: the service's current full weights, whatever their version;
    - `{"version": V}`: the current full weights, which must be version V (else 409);
    - `{"lora_path": P, "version": V}`: the LoRA adapter in folder P (under the service's
      AMR_POLICY_ROOT), labelled V, on top of the current full weights;
    - `{"lora_name": N}`: an adapter registered at start-up (`--lora-modules N=PATH`).
    """

    version: VersionLabel | None = Field(
        None, description="Without an adapter: the full-weight version the service must hold (409 otherwise). "
                          "With `lora_path`: the adapter's version label (required).")
    lora_path: CheckpointPath | None = Field(
        None, description="A PEFT LoRA adapter folder, absolute or relative to the service's policy root.")
    lora_name: VersionLabel | None = Field(
        None, description="An adapter registered at start-up with `--lora-modules NAME=PATH`.")

    @model_validator(mode="after")
    def _one_source(self) -> "PolicyRef":
        if self.lora_path is not None and self.lora_name is not None:
            raise ValueError("give lora_path (with version) or lora_name, not both")
        if self.lora_path is not None and self.version is None:
            raise ValueError("lora_path needs a version label: it keys the reflection cache, so "
                             "a changed adapter must get a new one")
        if self.lora_name is not None and self.version is not None:
            raise ValueError("a registered adapter (lora_name) has no version; use lora_path "
                             "and version for an adapter that changes")
        return self


class ScoreRequest(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    groups: list[Group] = Field(..., min_length=1, max_length=4096)
    step: Integer = Field(..., ge=0, description="The trainer's global step; drives the anneal schedule.")
    config: ScoringConfig | None = Field(None, description="Overrides of the server's defaults; only set fields apply.")
    returns: ReturnSwitches = Field(default_factory=ReturnSwitches, alias="return")
    policy: PolicyRef | None = Field(
        None, description="The policy that scores this request (default: the current full weights).")


class PolicyUpdate(_Strict):
    """`POST /v1/policy`: load new full weights into the running engine."""

    path: CheckpointPath = Field(
        ..., description="A checkpoint folder (config.json + *.safetensors, the served architecture), "
                         "absolute or relative to the service's policy root.")
    version: VersionLabel = Field(..., description="The label every later response reports, e.g. step-17.")


# --------------------------------------------------------------------------------------------
# Response
# --------------------------------------------------------------------------------------------


class ReflectionRecord(BaseModel):
    kind: Literal["hint", "critique"]
    text: str | None = Field(None, description="The last attempt's reflection text (accepted or not).")
    accepted: bool
    reject_reason: str | None = Field(None, description="Why the final attempt was rejected; null when accepted.")
    reject_reasons: list[str] = Field(default_factory=list, description="The reason of every rejected attempt, in order.")
    rejected_texts: list[str] = Field(default_factory=list, description="The text of every rejected attempt, in order: "
                                      "rejected_texts[i] was refused for reject_reasons[i] (\"\" where nothing could be parsed).")
    attempts: int = 0
    source: Literal["generated", "override"] = "generated"
    cached: bool = False


class ScoredRollout(BaseModel):
    advantages: list[float] = Field(..., description="Â_i,t, one per response token.")
    base_advantage: float = Field(..., description="A_i, the GRPO advantage.")
    cig: list[float] | None = Field(None, description="Clipped CIG Î_t (0 where not computed).")
    gated: list[bool] | None = Field(None, description="True where the gate opened (Δ_t > 0).")
    student_logprobs: list[float] | None = None
    teacher_logprobs: list[float] | None = None
    reflection: ReflectionRecord | None = None


class ScoredGroup(BaseModel):
    rollouts: list[ScoredRollout]


class Timings(BaseModel):
    reflect_s: float = 0.0
    score_s: float = 0.0
    total_s: float = 0.0


class BranchStats(BaseModel):
    """Credit health of one branch of the gate: hints on A_i > 0 rollouts, critiques on A_i < 0."""

    rollouts: int = Field(0, description="Rollouts of this branch with an accepted reflection.")
    reflected_tokens: int = Field(0, description="Their response tokens the gate may fire on (special tokens are never gated).")
    gated_tokens: int = 0
    gate_rate: float = Field(0.0, description="gated_tokens / reflected_tokens: aim for 5-15 %.")
    tau: float = Field(0.0, description="The margin this branch's gate used (nats): tau_pos / tau_neg, or the calibrated one with gate_rate_target.")
    cig_p01: float = Field(0.0, description="1st percentile of the clipped CIG on this branch's reflected tokens (nats).")
    cig_p05: float = 0.0
    cig_p50: float = 0.0
    cig_p95: float = 0.0
    cig_p99: float = 0.0


class BatchStats(BaseModel):
    groups: int
    rollouts: int
    response_tokens: int = Field(..., description="Response tokens in the request.")
    tokens_scored: int = Field(..., description="Response tokens teacher-forced by the engine (both passes); "
                                                "passes read from the score cache are not counted.")
    reflected_tokens: int = Field(..., description="Response tokens of rollouts with an accepted reflection.")
    gated_tokens: int
    gate_rate: float = Field(..., description="gated_tokens / reflected_tokens.")
    reflections_requested: int
    reflections_generated: int = Field(..., description="Writer generations run, retries included.")
    reflections_cached: int = 0
    scores_cached: int = Field(0, description="Scoring passes read from the score cache (a resent "
                                              "group at the same policy version), not in tokens_scored.")
    reflections_accepted: int
    reflections_rejected: int
    acceptance_rate: float
    reject_reasons: dict[str, int] = Field(default_factory=dict)
    cig_mean: float
    cig_std: float
    nonfinite_cig: int = Field(..., description="Tokens whose CIG was not finite and was set to 0.")
    mean_abs_base_advantage: float
    mean_abs_advantage: float
    top_gated_tokens: list[tuple[str, int]] = Field(default_factory=list, description="Most often gated tokens.")
    timings: Timings = Field(default_factory=Timings)
    positive: BranchStats = Field(default_factory=BranchStats, description="The hint branch (A_i > 0): the gate rewards tokens with CIG above tau_pos.")
    negative: BranchStats = Field(default_factory=BranchStats, description="The critique branch (A_i < 0): the gate blames tokens with CIG below -tau_neg.")


class ScoreResponse(BaseModel):
    model: str
    policy_version: str = Field(..., description="The full-weight version that scored the whole request.")
    adapter: str | None = Field(None, description="The LoRA adapter used on top: its version label, or its registered name.")
    template_version: str
    step: int
    anneal_weight: float
    groups: list[ScoredGroup]
    stats: BatchStats


# Streamed answers (`Accept: application/x-ndjson`): one JSON object per line, a group each as
# it completes (in completion order), then one `end` line, or one `error` line if the request
# failed after the stream began.


class StreamedGroup(BaseModel):
    type: Literal["group"] = "group"
    index: int = Field(..., description="The group's position in the request's `groups`.")
    group: ScoredGroup


class StreamedEnd(BaseModel):
    """Everything of a ScoreResponse but its groups, which came before, one line each."""

    type: Literal["end"] = "end"
    model: str
    policy_version: str
    adapter: str | None = None
    template_version: str
    step: int
    anneal_weight: float
    stats: BatchStats


class PolicyStatus(BaseModel):
    """`GET /v1/policy`, and the answer of `POST /v1/policy`."""

    version: str = Field(..., description="The full-weight version in service.")
    path: str = Field(..., description="The folder those weights came from.")
    previous_version: str | None = Field(None, description="POST only: the version it replaced.")
    changed: bool | None = Field(None, description="POST only: false when that version and folder were already in service.")
    reload_s: float | None = Field(None, description="POST only: seconds spent loading the weights.")
    wait_s: float | None = Field(None, description="POST only: seconds spent waiting for in-flight requests.")
    lora_enabled: bool = False
    lora_modules: list[str] = Field(default_factory=list, description="Adapters registered at start-up.")
    adapters_loaded: list[str] = Field(default_factory=list, description="Adapters in the engine's LRU, most recent last.")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(..., description="Machine-readable kind: invalid_request, overloaded, draining, ...")
    message: str = Field(..., description="What went wrong and what to change.")
    field: str | None = Field(None, description="The offending field or header, e.g. `groups[1].rollouts[0].reward`.")


class StreamedError(BaseModel):
    """The request failed after its stream began: the status and envelope it would have had."""

    type: Literal["error"] = "error"
    status: int = Field(..., description="The HTTP status a unary request would have got (e.g. 504).")
    error: ErrorDetail
    retry_after_s: float | None = Field(None, description="Retry-After, for retryable statuses.")


class ErrorResponse(BaseModel):
    """Every error answer of the service: `{"error": {"type", "message", "field"}}`."""

    error: ErrorDetail


class ProbeStatus(BaseModel):
    """`/healthz` and `/readyz`: ok, ready, starting, draining or engine_dead."""

    status: str
