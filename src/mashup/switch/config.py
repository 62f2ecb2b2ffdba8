"""Typed configuration for Switch Generation, loadable from YAML like mashup.config's stages."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from mashup.config import BASE_SPELLINGS, NAMED_BASES, Finite, Precision, StageConfig, TrainConfig
from mashup.io.files import same_path
from mashup.library.identity import stored_base

logger = logging.getLogger(__name__)
ALIGNED = "aligned"
# the switch config a collect, a switcher training and an eval each write into their output dir
SWITCH_CONFIG = "switch_config.yaml"
# the eval rows beside each candidate alone ("alone:NAME"), in the order an eval runs them
SYSTEMS = ("random", "switcher-untrained", "switcher-trained", "router", "logit-average", "merge")
ChatTemplate = Literal["auto", "on", "off"]
RewardMode = Literal["binary", "margin"]


class CandidateConfig(StageConfig):
    """One model that may write segments: a base (named, local dir or Hub id), or a library checkpoint."""

    name: str | None = Field(None, description="label in traces and tables (default: derived from the source)")
    model: str | None = Field(None, description=BASE_SPELLINGS)
    adapter: str | None = Field(None, description="a LoRA adapter dir on `model`")
    checkpoint: str | None = Field(None, description="a library checkpoint id (LoRA on its base, or a full model)")
    role: str = Field("candidate", description=f"'{ALIGNED}' writes the first and last segments; any other "
                                               "role (pretrained, expert, ...) is a free label")
    chat_template: ChatTemplate = Field("auto", description="auto: apply it when the tokenizer has one")

    @field_validator("role")
    @classmethod
    def _not_misspelt_aligned(cls, role: str) -> str:
        """Only 'aligned' changes what a candidate does, so a near miss of it would silently be a label."""
        folded = role.strip().lower()
        # a label built on the word ("unaligned", "aligned-sft") is a label, and so is a word two edits away
        # ("signed"); "Aligned", "aligned ", "aligend", "alined" are near misses
        # a cut-short "aligned" of 5+ letters ("align", "Aligne") would be a label too, leaving no aligned candidate
        cut_short = len(folded) >= 5 and ALIGNED.startswith(folded)
        near = ALIGNED not in folded and _edit_distance(folded, ALIGNED) == 1
        if role != ALIGNED and (folded == ALIGNED or cut_short or near):
            raise ValueError(f"role '{role}' reads as a misspelt '{ALIGNED}' (the one role that changes what a "
                             f"candidate does: it writes the first and last segments); write '{ALIGNED}', or a "
                             "label further from it")
        return role

    @model_validator(mode="after")
    def _one_source(self) -> CandidateConfig:
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'model' or 'checkpoint'")
        if self.checkpoint is not None and self.adapter is not None:
            raise ValueError("'adapter' goes with 'model'; a library checkpoint already names its weights")
        return self

    def label(self) -> str:
        if self.name:
            return self.name
        source = self.checkpoint or str(self.model).rstrip("/").rsplit("/", 1)[-1]
        return f"{source}+{str(self.adapter).rstrip('/').rsplit('/', 1)[-1]}" if self.adapter else source


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (optimal string alignment): insertions, deletions, substitutions and swaps of
    two adjacent letters ("aligend") each count one edit."""
    before, row = [0] * (len(b) + 1), list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (x != y))
            if i > 1 and j > 1 and x == b[j - 2] and a[i - 2] == y:
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
    return row[-1]


# the shortest checkpoint id prefix taken to name the same checkpoint as a longer one it begins: ids are the
# first 12 hex digits of the weights' sha256 and `library` may differ between two configs (or be gone), so a
# prefix is compared by its letters, not looked up; two given checkpoints share 6 hex digits by a chance of
# 1 in 16.7 million
MIN_ID_PREFIX = 6


def _same_checkpoint(recorded: str | None, given: str | None) -> bool:
    """Whether two checkpoint ids (or unique prefixes, as `library` takes them) name one checkpoint."""
    if recorded is None or given is None or recorded == given:
        return recorded == given
    shorter, longer = sorted((recorded, given), key=len)
    return len(shorter) >= MIN_ID_PREFIX and longer.startswith(shorter)


def _same_model(recorded: str | None, given: str | None, *, suffix_match: bool = True) -> bool:
    """``_same_place`` for a base, where a named model (``smollm2-135m``) is never a dir of that name: a candidate's
    load (``resolve_base_dir``) takes the name for the named model even where such a dir exists."""
    if recorded is not None and given is not None and (recorded in NAMED_BASES) != (given in NAMED_BASES):
        return False
    return _same_place(recorded, given, suffix_match=suffix_match)


def _same_place(recorded: str | None, given: str | None, *, suffix_match: bool = True) -> bool:
    """Whether a recorded model or adapter spelling names the given one: equal, or the same dir resolved (the
    library's spelling rule).

    A relative recorded path (a collect recorded its candidates as given before it recorded them absolute, and
    so did `switch train`) was relative to a working dir that is not known: it matches a given dir whose path
    ends with it (``models/m1`` matches ``/work/proj/models/m1``), the most that can be compared. A recorded Hub
    id (``org/model``) reads as such a path too, so it matches a local dir ending in ``org/model``: left so, as
    a dir of that name is almost always that model's download. Without ``suffix_match`` (a collect's resume,
    which compared exact strings before it recorded paths absolute) a relative recorded path must be the given
    spelling itself.
    """
    if recorded is None or given is None:
        return recorded == given
    if recorded == given:
        return True
    if not suffix_match and not Path(recorded).expanduser().is_absolute():
        return False
    if same_path(recorded, given):
        return True
    if not suffix_match:
        return False
    here = Path(given).expanduser()
    here = here.resolve() if here.exists() else here
    parts = [part for part in Path(recorded).parts if part not in (".", "..")]
    if Path(recorded).expanduser().is_absolute() or not parts or not here.is_absolute():
        return False
    same = here.parts[-len(parts):] == tuple(parts)
    if same:
        logger.debug("recorded relative path %s taken as %s (the dir it was relative to is not known)", recorded, here)
    return same


def candidates_difference(recorded: Sequence[CandidateConfig], given: Sequence[CandidateConfig], *,
                          suffix_match: bool = True) -> str | None:
    """The first way ``given`` differs from ``recorded`` in what a label's (or a switcher digit's) index stands
    for: the candidate's weights (checkpoint id, model, adapter) and whether it is the aligned one; None when the
    same. Names and other role labels are only labels, and are not compared. ``suffix_match``: a relative
    recorded path matches a given dir ending with it (see ``_same_place``)."""
    for index, (old, new) in enumerate(zip(recorded, given)):
        fields = {"checkpoint": (old.checkpoint, new.checkpoint, _same_checkpoint(old.checkpoint, new.checkpoint)),
                  "model": (old.model, new.model, _same_model(old.model, new.model, suffix_match=suffix_match)),
                  "adapter": (old.adapter, new.adapter,
                              _same_place(old.adapter, new.adapter, suffix_match=suffix_match)),
                  "role": (old.role, new.role, (old.role == ALIGNED) == (new.role == ALIGNED))}
        for field, (was, now, same) in fields.items():
            if not same:
                return f"candidate {index} ({old.label()}): {field} {was} recorded, {now} in the config"
    if len(recorded) == len(given):
        return None
    first = min(len(recorded), len(given))
    extra, side = (recorded[first], "recorded") if len(recorded) > len(given) else (given[first], "in the config")
    return f"candidate {first} ({extra.label()}): only {side} ({len(recorded)} recorded, {len(given)} in the config)"


def resolved_candidate(candidate: CandidateConfig) -> CandidateConfig:
    """The candidate as a record that another working dir reads the same: its model as the library records a base
    (a local dir absolute; a named model or Hub id as given), its adapter dir absolute."""
    adapter = str(Path(candidate.adapter).expanduser().absolute()) if candidate.adapter else None
    model = stored_base(candidate.model) if candidate.model else candidate.model
    return candidate.model_copy(update={"model": model, "adapter": adapter})


class GenerationConfig(StageConfig):
    """Segments of a fixed number of new tokens; greedy unless ``do_sample``."""

    segment_tokens: int = Field(50, gt=0, description="new tokens per segment (the paper's 50)")
    max_new_tokens: int = Field(200, gt=0, description="response length cap, in the writers' tokens")
    do_sample: bool = False
    temperature: Finite = Field(1.0, gt=0)
    top_p: Finite = Field(1.0, gt=0, le=1)
    seed: int = Field(0, ge=0)  # as every seed: random.Random(-3) draws as Random(3)
    aligned_ends: bool = Field(True, description="the aligned candidate writes the first and last segments")

    @property
    def n_segments(self) -> int:
        return -(-self.max_new_tokens // self.segment_tokens)

    def segment_budget(self, step: int) -> int:
        """New tokens segment ``step`` may write: ``segment_tokens``, the last only what the cap leaves."""
        return min(self.segment_tokens, self.max_new_tokens - step * self.segment_tokens)


class SwitcherConfig(StageConfig):
    """The LM that picks the next writer from the digit logits; untrained without ``adapter``."""

    model: str | None = Field(None, description="base LM (default: the aligned candidate's base)")
    adapter: str | None = Field(None, description="trained switcher LoRA dir (the adapter/ of `switch train`)")
    top_p: Finite | None = Field(None, gt=0, le=1, description="sample the choice with top-p; argmax when unset")


class SwitchConfig(StageConfig):
    """The candidates, how they generate, and the switcher."""

    candidates: list[CandidateConfig] = Field(min_length=2, max_length=4)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    switcher: SwitcherConfig = Field(default_factory=SwitcherConfig)
    library: str | None = Field(None, description="library dir for checkpoint ids (default $MASHUP_LIBRARY)")
    precision: Precision | None = Field(None, description="auto | fp32 | bf16; default $MASHUP_PRECISION or auto")

    @model_validator(mode="after")
    def _roles_and_names(self) -> SwitchConfig:
        if sum(c.role == ALIGNED for c in self.candidates) > 1:
            raise ValueError(f"at most one candidate may have role '{ALIGNED}'")
        labels = [c.label() for c in self.candidates]
        if len(set(labels)) != len(labels):
            raise ValueError(f"candidate names must differ, got {labels}; set 'name'")
        return self

    def aligned_index(self) -> int | None:
        return next((i for i, c in enumerate(self.candidates) if c.role == ALIGNED), None)


class RewardConfig(StageConfig):
    name: str = Field("auto", description="number_match | number_closeness | choice_cloze | auto (by task kind)")
    mode: RewardMode = Field("binary", description="choice_cloze: 0/1 correctness, or the log-likelihood margin")


def _reward_shorthand(value: Any) -> Any:
    """``reward: number_closeness`` is short for ``reward: {name: number_closeness}``; an empty ``reward:`` is
    the default."""
    if value is None:
        return {}
    return {"name": value} if isinstance(value, str) else value


# every config's reward field: a RewardConfig, or its name alone
RewardField = Annotated[RewardConfig, BeforeValidator(_reward_shorthand)]


class CollectConfig(StageConfig):
    """Random-switch rollouts that label which candidate should write the next segment."""

    task: str
    instances: int = Field(64, gt=0, description="train questions sampled (one prefix each)")
    rollouts: int = Field(2, gt=0, description="k random-switch completions after each candidate's segment")
    cut_min: Finite = Field(0.1, ge=0, lt=1)
    cut_max: Finite = Field(0.9, gt=0, le=1)
    seed: int = Field(0, ge=0)  # as every seed: random.Random(-3) draws as Random(3)
    reward: RewardField = Field(default_factory=RewardConfig, description="a reward name, or {name, mode}")
    temperature: Finite = Field(0.7, gt=0, description="rollouts sample (the reference code's 0.7 / 0.9)")
    top_p: Finite = Field(0.9, gt=0, le=1)


def default_switcher_training() -> TrainConfig:
    """LoRA on the switcher, loss on the label digit only; a few epochs over a small labelled set."""
    return TrainConfig(lr=5e-4, epochs=3, batch_size=8, lora_r=8, lora_alpha=16)


class SwitchEvalConfig(StageConfig):
    task: str
    max_examples: int | None = Field(50, gt=0, description="test questions (seeded sample); None: the whole split")
    systems: list[str] | None = Field(None, description="which rows to run (default: all that apply)")
    plot_examples: int = Field(6, ge=0)
    reward: RewardField = Field(default_factory=RewardConfig, description="a reward name, or {name, mode}")
