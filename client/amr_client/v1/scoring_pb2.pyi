from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("groups", "step", "config", "returns", "policy")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[Group]
    step: int
    config: ScoringConfig
    returns: ReturnSwitches
    policy: PolicyRef
    def __init__(self, groups: _Optional[_Iterable[_Union[Group, _Mapping]]] = ..., step: _Optional[int] = ..., config: _Optional[_Union[ScoringConfig, _Mapping]] = ..., returns: _Optional[_Union[ReturnSwitches, _Mapping]] = ..., policy: _Optional[_Union[PolicyRef, _Mapping]] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("prompt", "rollouts", "reference")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    rollouts: _containers.RepeatedCompositeFieldContainer[Rollout]
    reference: Reference
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., rollouts: _Optional[_Iterable[_Union[Rollout, _Mapping]]] = ..., reference: _Optional[_Union[Reference, _Mapping]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("messages", "text", "prompt_token_ids")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    text: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., text: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Reference(_message.Message):
    __slots__ = ("answer", "solution")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SOLUTION_FIELD_NUMBER: _ClassVar[int]
    answer: str
    solution: str
    def __init__(self, answer: _Optional[str] = ..., solution: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("token_ids", "reward", "text", "correct", "feedback", "student_logprobs", "reflection_override")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    STUDENT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    reward: float
    text: str
    correct: bool
    feedback: str
    student_logprobs: _containers.RepeatedScalarFieldContainer[float]
    reflection_override: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., reward: _Optional[float] = ..., text: _Optional[str] = ..., correct: _Optional[bool] = ..., feedback: _Optional[str] = ..., student_logprobs: _Optional[_Iterable[float]] = ..., reflection_override: _Optional[str] = ...) -> None: ...

class ReturnSwitches(_message.Message):
    __slots__ = ("cig", "logprobs", "reflections")
    CIG_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_FIELD_NUMBER: _ClassVar[int]
    cig: bool
    logprobs: bool
    reflections: bool
    def __init__(self, cig: _Optional[bool] = ..., logprobs: _Optional[bool] = ..., reflections: _Optional[bool] = ...) -> None: ...

class PolicyRef(_message.Message):
    __slots__ = ("version", "lora_path", "lora_name")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LORA_PATH_FIELD_NUMBER: _ClassVar[int]
    LORA_NAME_FIELD_NUMBER: _ClassVar[int]
    version: str
    lora_path: str
    lora_name: str
    def __init__(self, version: _Optional[str] = ..., lora_path: _Optional[str] = ..., lora_name: _Optional[str] = ...) -> None: ...

class ScoringConfig(_message.Message):
    __slots__ = ("success_threshold", "norm_by_std", "std_unbiased", "std_eps", "lambda_pos", "gamma_neg", "tau_pos", "tau_neg", "kappa", "schedule", "decay_steps", "warmup_steps", "exp_k", "max_reflection_tokens", "reflection_temperature", "retry_temperature", "max_retries", "ngram_overlap", "allow_reference_in_writer", "gate_rate_target", "reflection_template", "cig_correction")
    SUCCESS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NORM_BY_STD_FIELD_NUMBER: _ClassVar[int]
    STD_UNBIASED_FIELD_NUMBER: _ClassVar[int]
    STD_EPS_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_POS_FIELD_NUMBER: _ClassVar[int]
    GAMMA_NEG_FIELD_NUMBER: _ClassVar[int]
    TAU_POS_FIELD_NUMBER: _ClassVar[int]
    TAU_NEG_FIELD_NUMBER: _ClassVar[int]
    KAPPA_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    DECAY_STEPS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    EXP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_REFLECTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    RETRY_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    NGRAM_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REFERENCE_IN_WRITER_FIELD_NUMBER: _ClassVar[int]
    GATE_RATE_TARGET_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CIG_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    success_threshold: float
    norm_by_std: bool
    std_unbiased: bool
    std_eps: float
    lambda_pos: float
    gamma_neg: float
    tau_pos: float
    tau_neg: float
    kappa: float
    schedule: str
    decay_steps: int
    warmup_steps: int
    exp_k: float
    max_reflection_tokens: int
    reflection_temperature: float
    retry_temperature: float
    max_retries: int
    ngram_overlap: int
    allow_reference_in_writer: bool
    gate_rate_target: float
    reflection_template: str
    cig_correction: str
    def __init__(self, success_threshold: _Optional[float] = ..., norm_by_std: _Optional[bool] = ..., std_unbiased: _Optional[bool] = ..., std_eps: _Optional[float] = ..., lambda_pos: _Optional[float] = ..., gamma_neg: _Optional[float] = ..., tau_pos: _Optional[float] = ..., tau_neg: _Optional[float] = ..., kappa: _Optional[float] = ..., schedule: _Optional[str] = ..., decay_steps: _Optional[int] = ..., warmup_steps: _Optional[int] = ..., exp_k: _Optional[float] = ..., max_reflection_tokens: _Optional[int] = ..., reflection_temperature: _Optional[float] = ..., retry_temperature: _Optional[float] = ..., max_retries: _Optional[int] = ..., ngram_overlap: _Optional[int] = ..., allow_reference_in_writer: _Optional[bool] = ..., gate_rate_target: _Optional[float] = ..., reflection_template: _Optional[str] = ..., cig_correction: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "policy_version", "adapter", "template_version", "step", "anneal_weight", "groups", "stats")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ANNEAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy_version: str
    adapter: str
    template_version: str
    step: int
    anneal_weight: float
    groups: _containers.RepeatedCompositeFieldContainer[ScoredGroup]
    stats: BatchStats
    def __init__(self, model: _Optional[str] = ..., policy_version: _Optional[str] = ..., adapter: _Optional[str] = ..., template_version: _Optional[str] = ..., step: _Optional[int] = ..., anneal_weight: _Optional[float] = ..., groups: _Optional[_Iterable[_Union[ScoredGroup, _Mapping]]] = ..., stats: _Optional[_Union[BatchStats, _Mapping]] = ...) -> None: ...

class ScoredGroup(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[ScoredRollout]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[ScoredRollout, _Mapping]]] = ...) -> None: ...

class ScoredRollout(_message.Message):
    __slots__ = ("advantages", "base_advantage", "cig", "gated", "student_logprobs", "teacher_logprobs", "reflection")
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    BASE_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    CIG_FIELD_NUMBER: _ClassVar[int]
    GATED_FIELD_NUMBER: _ClassVar[int]
    STUDENT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TEACHER_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REFLECTION_FIELD_NUMBER: _ClassVar[int]
    advantages: _containers.RepeatedScalarFieldContainer[float]
    base_advantage: float
    cig: _containers.RepeatedScalarFieldContainer[float]
    gated: _containers.RepeatedScalarFieldContainer[bool]
    student_logprobs: _containers.RepeatedScalarFieldContainer[float]
    teacher_logprobs: _containers.RepeatedScalarFieldContainer[float]
    reflection: ReflectionRecord
    def __init__(self, advantages: _Optional[_Iterable[float]] = ..., base_advantage: _Optional[float] = ..., cig: _Optional[_Iterable[float]] = ..., gated: _Optional[_Iterable[bool]] = ..., student_logprobs: _Optional[_Iterable[float]] = ..., teacher_logprobs: _Optional[_Iterable[float]] = ..., reflection: _Optional[_Union[ReflectionRecord, _Mapping]] = ...) -> None: ...

class ReflectionRecord(_message.Message):
    __slots__ = ("kind", "text", "accepted", "reject_reason", "reject_reasons", "attempts", "source", "cached", "rejected_texts")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASONS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    text: str
    accepted: bool
    reject_reason: str
    reject_reasons: _containers.RepeatedScalarFieldContainer[str]
    attempts: int
    source: str
    cached: bool
    rejected_texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., text: _Optional[str] = ..., accepted: _Optional[bool] = ..., reject_reason: _Optional[str] = ..., reject_reasons: _Optional[_Iterable[str]] = ..., attempts: _Optional[int] = ..., source: _Optional[str] = ..., cached: _Optional[bool] = ..., rejected_texts: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchStats(_message.Message):
    __slots__ = ("groups", "rollouts", "response_tokens", "tokens_scored", "reflected_tokens", "gated_tokens", "gate_rate", "reflections_requested", "reflections_generated", "reflections_cached", "reflections_accepted", "reflections_rejected", "acceptance_rate", "reject_reasons", "cig_mean", "cig_std", "nonfinite_cig", "mean_abs_base_advantage", "mean_abs_advantage", "top_gated_tokens", "timings", "positive", "negative", "scores_cached")
    class RejectReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SCORED_FIELD_NUMBER: _ClassVar[int]
    REFLECTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATE_RATE_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_CACHED_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFLECTIONS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_RATE_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASONS_FIELD_NUMBER: _ClassVar[int]
    CIG_MEAN_FIELD_NUMBER: _ClassVar[int]
    CIG_STD_FIELD_NUMBER: _ClassVar[int]
    NONFINITE_CIG_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_BASE_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_GATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    SCORES_CACHED_FIELD_NUMBER: _ClassVar[int]
    groups: int
    rollouts: int
    response_tokens: int
    tokens_scored: int
    reflected_tokens: int
    gated_tokens: int
    gate_rate: float
    reflections_requested: int
    reflections_generated: int
    reflections_cached: int
    reflections_accepted: int
    reflections_rejected: int
    acceptance_rate: float
    reject_reasons: _containers.ScalarMap[str, int]
    cig_mean: float
    cig_std: float
    nonfinite_cig: int
    mean_abs_base_advantage: float
    mean_abs_advantage: float
    top_gated_tokens: _containers.RepeatedCompositeFieldContainer[TokenCount]
    timings: Timings
    positive: BranchStats
    negative: BranchStats
    scores_cached: int
    def __init__(self, groups: _Optional[int] = ..., rollouts: _Optional[int] = ..., response_tokens: _Optional[int] = ..., tokens_scored: _Optional[int] = ..., reflected_tokens: _Optional[int] = ..., gated_tokens: _Optional[int] = ..., gate_rate: _Optional[float] = ..., reflections_requested: _Optional[int] = ..., reflections_generated: _Optional[int] = ..., reflections_cached: _Optional[int] = ..., reflections_accepted: _Optional[int] = ..., reflections_rejected: _Optional[int] = ..., acceptance_rate: _Optional[float] = ..., reject_reasons: _Optional[_Mapping[str, int]] = ..., cig_mean: _Optional[float] = ..., cig_std: _Optional[float] = ..., nonfinite_cig: _Optional[int] = ..., mean_abs_base_advantage: _Optional[float] = ..., mean_abs_advantage: _Optional[float] = ..., top_gated_tokens: _Optional[_Iterable[_Union[TokenCount, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., positive: _Optional[_Union[BranchStats, _Mapping]] = ..., negative: _Optional[_Union[BranchStats, _Mapping]] = ..., scores_cached: _Optional[int] = ...) -> None: ...

class BranchStats(_message.Message):
    __slots__ = ("rollouts", "reflected_tokens", "gated_tokens", "gate_rate", "cig_p01", "cig_p05", "cig_p50", "cig_p95", "cig_p99", "tau")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    REFLECTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GATE_RATE_FIELD_NUMBER: _ClassVar[int]
    CIG_P01_FIELD_NUMBER: _ClassVar[int]
    CIG_P05_FIELD_NUMBER: _ClassVar[int]
    CIG_P50_FIELD_NUMBER: _ClassVar[int]
    CIG_P95_FIELD_NUMBER: _ClassVar[int]
    CIG_P99_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    rollouts: int
    reflected_tokens: int
    gated_tokens: int
    gate_rate: float
    cig_p01: float
    cig_p05: float
    cig_p50: float
    cig_p95: float
    cig_p99: float
    tau: float
    def __init__(self, rollouts: _Optional[int] = ..., reflected_tokens: _Optional[int] = ..., gated_tokens: _Optional[int] = ..., gate_rate: _Optional[float] = ..., cig_p01: _Optional[float] = ..., cig_p05: _Optional[float] = ..., cig_p50: _Optional[float] = ..., cig_p95: _Optional[float] = ..., cig_p99: _Optional[float] = ..., tau: _Optional[float] = ...) -> None: ...

class TokenCount(_message.Message):
    __slots__ = ("token", "count")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    token: str
    count: int
    def __init__(self, token: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("reflect_s", "score_s", "total_s")
    REFLECT_S_FIELD_NUMBER: _ClassVar[int]
    SCORE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    reflect_s: float
    score_s: float
    total_s: float
    def __init__(self, reflect_s: _Optional[float] = ..., score_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class ScoreStreamMessage(_message.Message):
    __slots__ = ("group", "end")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    group: StreamedGroup
    end: StreamedEnd
    def __init__(self, group: _Optional[_Union[StreamedGroup, _Mapping]] = ..., end: _Optional[_Union[StreamedEnd, _Mapping]] = ...) -> None: ...

class StreamedGroup(_message.Message):
    __slots__ = ("index", "group")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    index: int
    group: ScoredGroup
    def __init__(self, index: _Optional[int] = ..., group: _Optional[_Union[ScoredGroup, _Mapping]] = ...) -> None: ...

class StreamedEnd(_message.Message):
    __slots__ = ("model", "policy_version", "adapter", "template_version", "step", "anneal_weight", "stats")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ANNEAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy_version: str
    adapter: str
    template_version: str
    step: int
    anneal_weight: float
    stats: BatchStats
    def __init__(self, model: _Optional[str] = ..., policy_version: _Optional[str] = ..., adapter: _Optional[str] = ..., template_version: _Optional[str] = ..., step: _Optional[int] = ..., anneal_weight: _Optional[float] = ..., stats: _Optional[_Union[BatchStats, _Mapping]] = ...) -> None: ...

class PolicyUpdate(_message.Message):
    __slots__ = ("path", "version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: str
    def __init__(self, path: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyStatus(_message.Message):
    __slots__ = ("version", "path", "previous_version", "changed", "reload_s", "wait_s", "lora_enabled", "lora_modules", "adapters_loaded")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    RELOAD_S_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    LORA_ENABLED_FIELD_NUMBER: _ClassVar[int]
    LORA_MODULES_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_LOADED_FIELD_NUMBER: _ClassVar[int]
    version: str
    path: str
    previous_version: str
    changed: bool
    reload_s: float
    wait_s: float
    lora_enabled: bool
    lora_modules: _containers.RepeatedScalarFieldContainer[str]
    adapters_loaded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., path: _Optional[str] = ..., previous_version: _Optional[str] = ..., changed: _Optional[bool] = ..., reload_s: _Optional[float] = ..., wait_s: _Optional[float] = ..., lora_enabled: _Optional[bool] = ..., lora_modules: _Optional[_Iterable[str]] = ..., adapters_loaded: _Optional[_Iterable[str]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Info(_message.Message):
    __slots__ = ("model", "model_path", "policy_version", "lora_enabled", "engine", "max_model_len", "vocab_size", "engine_settings", "template_version", "cache", "limits", "defaults", "score_cache")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LORA_ENABLED_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    SCORE_CACHE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_path: str
    policy_version: str
    lora_enabled: bool
    engine: str
    max_model_len: int
    vocab_size: int
    engine_settings: EngineSettings
    template_version: str
    cache: str
    limits: Limits
    defaults: ScoringConfig
    score_cache: str
    def __init__(self, model: _Optional[str] = ..., model_path: _Optional[str] = ..., policy_version: _Optional[str] = ..., lora_enabled: _Optional[bool] = ..., engine: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., engine_settings: _Optional[_Union[EngineSettings, _Mapping]] = ..., template_version: _Optional[str] = ..., cache: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., defaults: _Optional[_Union[ScoringConfig, _Mapping]] = ..., score_cache: _Optional[str] = ...) -> None: ...

class EngineSettings(_message.Message):
    __slots__ = ("dtype", "max_model_len", "kv_cache_gib", "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs", "cpu_threads_bind", "enforce_eager", "reasons", "prefix_caching", "tensor_parallel_size")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_GIB_FIELD_NUMBER: _ClassVar[int]
    GPU_MEMORY_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_BATCHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_BIND_FIELD_NUMBER: _ClassVar[int]
    ENFORCE_EAGER_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHING_FIELD_NUMBER: _ClassVar[int]
    TENSOR_PARALLEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    max_model_len: int
    kv_cache_gib: float
    gpu_memory_utilization: float
    max_num_batched_tokens: int
    max_num_seqs: int
    cpu_threads_bind: str
    enforce_eager: bool
    reasons: _containers.ScalarMap[str, str]
    prefix_caching: bool
    tensor_parallel_size: int
    def __init__(self, dtype: _Optional[str] = ..., max_model_len: _Optional[int] = ..., kv_cache_gib: _Optional[float] = ..., gpu_memory_utilization: _Optional[float] = ..., max_num_batched_tokens: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., cpu_threads_bind: _Optional[str] = ..., enforce_eager: _Optional[bool] = ..., reasons: _Optional[_Mapping[str, str]] = ..., prefix_caching: _Optional[bool] = ..., tensor_parallel_size: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_body_bytes", "max_groups", "max_rollouts", "max_tokens", "max_pending_sequences", "max_pending_tokens", "request_timeout_s", "max_request_timeout_s")
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    max_body_bytes: int
    max_groups: int
    max_rollouts: int
    max_tokens: int
    max_pending_sequences: int
    max_pending_tokens: int
    request_timeout_s: float
    max_request_timeout_s: float
    def __init__(self, max_body_bytes: _Optional[int] = ..., max_groups: _Optional[int] = ..., max_rollouts: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_pending_sequences: _Optional[int] = ..., max_pending_tokens: _Optional[int] = ..., request_timeout_s: _Optional[float] = ..., max_request_timeout_s: _Optional[float] = ...) -> None: ...
