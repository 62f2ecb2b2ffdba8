"""Switch Generation (arXiv 2510.09913): checkpoints take turns writing one response, guided by a switcher."""

from mashup.switch.api import evaluate_into, generate
from mashup.switch.candidates import Candidate, load_candidate, load_candidates
from mashup.switch.collect import best_candidate, collect
from mashup.switch.config import (CandidateConfig, CollectConfig, GenerationConfig, RewardConfig, SwitchConfig,
                                  SwitchEvalConfig, SwitcherConfig)
from mashup.switch.evaluate import evaluate_switch, wilson_interval
from mashup.switch.generation import Plan, Segment, SwitchTrace, switch_generate
from mashup.switch.switcher import Switcher, load_switcher
from mashup.switch.train import train_switcher

__all__ = [
    "Candidate", "CandidateConfig", "CollectConfig", "GenerationConfig", "Plan", "RewardConfig", "Segment",
    "SwitchConfig", "SwitchEvalConfig", "SwitchTrace", "Switcher", "SwitcherConfig", "best_candidate", "collect",
    "evaluate_into", "evaluate_switch", "generate", "load_candidate", "load_candidates", "load_switcher",
    "switch_generate", "train_switcher", "wilson_interval",
]
