"""Typed configuration for each stage (mashup.config_files reads them from YAML and saves them back)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# the config files' functions that callers long imported from here (the package exports them too)
from mashup.config_files import load_config, save_config  # noqa: F401
from mashup.errors import MashupError

Scoring = Literal["letter", "cloze", "auto"]
Metric = Literal["loss", "accuracy"]
TrainMode = Literal["lora", "full"]
LoraMode = Literal["ab", "delta", "concat"]
SignRule = Literal["mass", "count"]
Precision = Literal["auto", "fp32", "bf16"]

# Floats that must be finite numbers ("nan" and "inf" parse as floats and would slip past a range check).
Finite = Annotated[float, Field(allow_inf_nan=False)]

LORA_SHAPE_FIELDS = ("lora_r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max; this module must not import torch
MAX_LR = 1.0  # AdamW moves each weight by about lr a step: above 1 that outgrows the weights themselves
# mashup.named_models.NAMED_MODELS' names, for help texts: that module imports torch, which --help and config loading
# must not (a test pins the two equal)
NAMED_BASES = ("smollm2-135m", "gemma3-270m")
BASE_SPELLINGS = f"{', '.join(NAMED_BASES)}, a local HF dir or a Hub id"
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataConfig(StageConfig):
    """Where the target data comes from and how it is turned into prompts."""

    data: str = Field(description="named task (see `mashup tasks list`) or a data file/dir")
    name: str | None = Field(None, description="the target's name (default: the task name, or the file's name, "
                                               "or its directory's for files called train/test)")
    train: str | None = Field(None, description="explicit train file (overrides carving)")
    test: str | None = Field(None, description="explicit test file (overrides carving)")
    test_size: Finite = Field(0.2, gt=0, description="fraction (<1) or count (>=1) carved out as test")
    validation_size: Finite = Field(0.0, ge=0, description="fraction (<1) or count (>=1) of the train split carved out "
                                                          "as validation (for model selection); 0: none")
    split_seed: int = Field(0, ge=0)
    scoring: Scoring = "auto"
    max_length: int = Field(384, gt=0, description="max tokens per example")
    max_train_examples: int | None = Field(None, gt=0)
    max_test_examples: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        from mashup.data.target import check_sources

        try:
            check_sources(self.data, self.train, self.test)
        except MashupError as exc:  # a config file's loader names the file and the field
            raise ValueError(exc.line()) from None
        return self


SelectorName = Literal["exhaustive", "halving", "prefilter+halving"]
ExecutorName = Literal["local", "ray"]
PrefilterSignal = Literal["first_order", "arrow"]


# halving's default cap on forward tokens, as a share of exhaustive scoring's: the target. Replayed on
# 1,000 real SmolLM2 candidates x 256 questions (8 targets x 100 orderings, docs/selection.md) it kept the same
# top 2 as without it (98.5% against 98.6%) at 9.2% of the tokens against 9.8%, and at most 10% where near-ties had
# sent three targets to 11.0-11.4%. There near-ties took 14% on top of the schedule's own 8.6% on average,
# and the cap left them 16%. ``auto`` caps only where the schedule leaves near-ties at least
# AUTO_NEAR_TIE_ROOM of its own cost: pools of about 330 candidates and more at 256 questions (the 1,000
# above: schedules of 8.4-8.7% of the tokens); on smaller ones the cap would cut the near-tie rule short.
AUTO_MAX_SHARE = 0.1
AUTO_NEAR_TIE_ROOM = 0.1


class HalvingConfig(StageConfig):
    """Successive halving: every survivor scored on the same growing nested sample, the worst dropped."""

    min_samples: int = Field(8, gt=0, description="samples each candidate is scored on in the first round")
    factor: float = Field(4.0, gt=1, description="each round keeps 1/factor of the candidates and grows the "
                                                 "sample factor times, up to `samples`")
    min_survivors: int = Field(8, gt=0, description="candidates that always reach the full sample (at least k)")
    keep_within_se: float = Field(2.0, ge=0, description="also keep (up to as many again) the candidates whose "
                                  "per-example loss gap to the k-th best is within this many standard errors "
                                  "(a paired test; loss metric only); 0 turns it off")
    max_share: Annotated[float, Field(gt=0, le=1)] | Literal["auto"] | None = Field(
        "auto", description="keep near-ties only while the selection's forward tokens (a prefilter's probe "
                            "included) stay within this share of exhaustive scoring's; the schedule itself is never "
                            f"cut; auto: {AUTO_MAX_SHARE:g} where the schedule leaves near-ties room under it "
                            "(pools of about 330 candidates and more at 256 questions), else no cap; none: no cap")


def max_share_option(text: str | None) -> dict[str, Any]:
    """A ``--halving-max-share`` value (a share, ``auto`` or ``none``: no cap) as HalvingConfig's fields; unset:
    none, so the default applies."""
    if text is None:
        return {}
    word = text.strip().lower()
    if word in ("auto", "none"):
        return {"max_share": None if word == "none" else word}
    try:
        return {"max_share": float(word)}
    except ValueError:
        raise MashupError(f"invalid --halving-max-share '{text}'", None,
                          "give a share in (0, 1], auto or none") from None


class PrefilterConfig(StageConfig):
    """Signals that need no forward pass per candidate; the best by any signal go on to halving."""

    signals: list[PrefilterSignal] = Field(default_factory=lambda: ["first_order", "arrow"], min_length=1)
    keep: float = Field(0.5, gt=0, description="candidates kept: a fraction (<1) or a count (>=1)")
    min_keep: int = Field(32, gt=0, description="never keep fewer than this many (or all)")

    @field_validator("keep")
    @classmethod
    def _keep_count_whole(cls, value: float) -> float:
        if value >= 1 and not float(value).is_integer():  # 1.5 would be read as the count 1
            raise ValueError(f"{value:g} is neither a fraction (below 1) nor a whole count of candidates "
                             "(e.g. 0.5 or 64)")
        return value


class SelectConfig(StageConfig):
    samples: int = Field(256, gt=0)
    k: int = Field(2, gt=0)
    metric: Metric = "loss"
    with_accuracy: bool = Field(False, description="also score accuracy when ranking by loss (cloze data: every "
                                "choice's forward pass; by loss alone only the correct one's)")
    seed: int = Field(0, ge=0)  # random.Random(-3) draws as Random(3); numpy refuses negatives
    batch_size: int = Field(16, gt=0)
    cache: bool = Field(True, description="reuse scores of checkpoints already scored on this exact sample")
    selector: SelectorName = Field("exhaustive", description="exhaustive | halving | prefilter+halving")
    halving: HalvingConfig = Field(default_factory=HalvingConfig)
    prefilter: PrefilterConfig = Field(default_factory=PrefilterConfig)
    executor: ExecutorName = Field("local", description="where scoring runs: local | ray")
    ray_address: str | None = Field(None, description="an existing Ray cluster (default: start one locally)")
    adapters_per_forward: int | None = Field(None, gt=0, description="LoRA adapters scored in one forward "
                                                                      "(default: by model size and device)")
    read_ahead: bool | None = Field(None, description="read the next adapters' files on threads while forwards "
                                    "run (default: on CUDA only; on a CPU the threads take cores from the forwards)")
    scoring_copies: bool = Field(True, description="reading ahead into bf16 slots, keep a bf16 copy of each float32 "
                                 "adapter under the library dir (scoring-copies/, safe to delete) and read it in "
                                 "later selections: the same scores from half the bytes")
    include_target_checkpoints: bool = Field(
        False, description="also rank checkpoints trained on the target itself (excluded by default: they leak it)")


class MergeConfig(StageConfig):
    """How to merge the selected checkpoints; ``None`` fields take the method's own default."""

    method: str = "average"
    weights: list[Finite] | None = None
    density: float | None = Field(None, description="fraction kept by ties/dare_*/magnitude_prune; "
                                  "default: the method's (0.2, see docs/merging.md)")
    lambda_: Finite = Field(1.0, alias="lambda")
    normalize: bool | None = None
    sign: SignRule = "mass"
    seed: int = Field(0, ge=0)  # random.Random(-3) draws as Random(3); numpy refuses negatives
    lora_mode: LoraMode | None = Field(None, description="default: ab for average/task_arithmetic, "
                                       "delta for the non-linear methods")
    lora_rank: int | None = Field(None, gt=0, description="output rank in delta mode; default: the most "
                                  "common input rank")
    fisher_samples: int = Field(64, gt=0)

    @field_validator("weights")
    @classmethod
    def _some_weight(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and value and not any(value):
            raise ValueError("all weights are 0, so the merge would hold none of the checkpoints (one must be "
                             "non-zero)")
        for weight in value or []:
            _require_float32(weight, "weight")
        return value

    @field_validator("lambda_")
    @classmethod
    def _lambda_in_float32(cls, value: float) -> float:
        return _require_float32(value, "lambda")

    @field_validator("density")
    @classmethod
    def _density_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"density must be in (0, 1] (the fraction kept), got {value}")
        return value


def _require_float32(value: float, what: str) -> float:
    """Refuse a merge scale beyond float32's range: merges compute in float32, where it is inf."""
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{what} {value:g} is beyond float32's range (about 3.4e38), in which merges compute; "
                         f"give a smaller {what}")
    return value


class TrainConfig(StageConfig):
    mode: TrainMode = "lora"
    lr: Finite | None = Field(None, gt=0, description="peak learning rate, at most 1; defaults: 2e-4 for LoRA, "
                                                      "2e-5 for full fine-tuning")
    epochs: Finite = Field(1.0, gt=0)
    batch_size: int = Field(32, gt=0)
    micro_batch_size: int | None = Field(None, gt=0, description="split each batch for memory; same maths")
    max_steps: int | None = Field(None, gt=0)
    eval_every: int | None = Field(None, gt=0, description="steps between evaluations (default: 10% of steps)")
    seed: int = Field(0, ge=0)  # random.Random(-3) draws as Random(3); numpy refuses negatives
    lora_r: int = Field(8, gt=0)
    lora_alpha: Finite = Field(16, description="LoRA scale numerator (alpha / r); negative when an init adapter "
                                               "is a negated task vector, never 0")
    lora_dropout: Finite = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    use_rslora: bool = False
    weight_decay: Finite = Field(0.01, ge=0)
    warmup_ratio: Finite = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm (inf: no clipping)")

    @field_validator("lr")
    @classmethod
    def _lr_at_most_one(cls, value: float | None) -> float | None:
        if value is not None and value > MAX_LR:
            raise ValueError(f"learning rate {value:g} is above {MAX_LR:g}, where AdamW updates make no sense; "
                             "typical values are 1e-5..1e-3")
        return value

    @field_validator("lora_alpha")
    @classmethod
    def _alpha_not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("lora_alpha 0 scales the adapter to nothing, so it could not learn; the usual value is "
                             "2 x lora_r")
        return value

    def resolved_lr(self) -> float:
        """The peak learning rate: ``lr``, or the mode's default."""
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.mode == "lora" else 2e-5

    def resolved_eval_every(self, steps: int) -> int:
        """Steps between evaluations in a run of ``steps`` steps: ``eval_every``, or 10% of the steps."""
        return self.eval_every or max(1, steps // 10)

    def resolved(self, steps: int) -> TrainConfig:
        """This config with the defaults that depend on the mode and the step count filled in: what a run of
        ``steps`` steps trains with, and what its output dir records."""
        return self.model_copy(update={"lr": self.resolved_lr(), "eval_every": self.resolved_eval_every(steps)})

    def lora_shape(self) -> dict[str, Any]:
        """The LoRA settings that fix an adapter's capacity; both arms of a comparison must share them."""
        shape = {name: getattr(self, name) for name in LORA_SHAPE_FIELDS}
        return {**shape, "target_modules": sorted(shape["target_modules"])}


class EvalConfig(StageConfig):
    split: Literal["train", "validation", "test"] = "test"
    batch_size: int = Field(16, gt=0)
    max_examples: int | None = Field(None, ge=0, description="cap on examples evaluated (0: no evaluation)")


class RunConfig(StageConfig):
    """The whole method: select, merge, train, evaluate (and optionally the baseline)."""

    base: str
    data: DataConfig
    library: str | None = None
    out: str
    baseline: bool = False
    select: SelectConfig = Field(default_factory=SelectConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    add_to_library: bool = True
    allow_pickle: bool = False
    precision: Precision | None = Field(None, description="auto | fp32 | bf16; default $MASHUP_PRECISION or auto")
