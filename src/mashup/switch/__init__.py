"""Switch Generation (arXiv 2510.09913): checkpoints take turns writing one response, guided by a switcher.

Names are imported on first use (see mashup.lazy), so the CLI can register `mashup switch` cheaply.
"""

from mashup.lazy import lazy_exports

_MODULES = {
    "mashup.switch.api": ["evaluate_into", "generate"],
    "mashup.switch.candidates": ["Candidate", "load_candidate", "load_candidates"],
    "mashup.switch.collect": ["best_candidate", "collect"],
    "mashup.switch.config": ["CandidateConfig", "CollectConfig", "GenerationConfig", "RewardConfig", "SwitchConfig",
                             "SwitchEvalConfig", "SwitcherConfig"],
    "mashup.switch.evaluate": ["evaluate_switch", "wilson_interval"],
    "mashup.switch.generation": ["Plan", "Segment", "SwitchTrace", "switch_generate"],
    "mashup.switch.switcher": ["Switcher", "load_switcher"],
    "mashup.switch.train": ["train_switcher"],
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
