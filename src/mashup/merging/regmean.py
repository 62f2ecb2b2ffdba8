"""RegMean (Jin et al. 2023): closed-form merge of Linear layers from the Gram matrices of their inputs."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch

from mashup.errors import MergeError
from mashup.merging.average import AverageMerge
from mashup.merging.base import MergeMethod, MergeParams, stack_weights

logger = logging.getLogger(__name__)


def _limited(batches: Sequence[dict[str, torch.Tensor]], max_examples: int | None) -> Iterator[dict[str, torch.Tensor]]:
    seen = 0
    for batch in batches:
        take = batch["input_ids"].shape[0]
        if max_examples is not None:
            take = min(take, max_examples - seen)
        if take <= 0:
            return
        yield {key: value[:take] for key, value in batch.items()}
        seen += take


def _is_conv1d(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # here: importing transformers is slow and merges rarely need it

    return isinstance(module, Conv1D)


def conv1d_weights(model: torch.nn.Module) -> set[str]:
    """The names of the weights stored (in, out): those of transformers' Conv1D (GPT-2 style) layers."""
    return {f"{name}.weight" for name, m in model.named_modules() if _is_conv1d(m)}


def _input_features(module: torch.nn.Module) -> int | None:
    """The input width of a Linear or a Conv1D (weight stored (in, out)); None for other modules."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features
    return module.weight.shape[0] if _is_conv1d(module) else None


@torch.no_grad()
def estimate_gram(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                  max_examples: int | None = None) -> dict[str, torch.Tensor]:
    """G = XᵀX of the inputs of every ``nn.Linear`` and Conv1D, keyed by its weight name; padding tokens excluded."""
    linears = {name: m for name, m in model.named_modules() if _input_features(m) is not None}
    grams = {f"{name}.weight": torch.zeros(_input_features(m), _input_features(m)) for name, m in linears.items()}
    current: dict[str, torch.Tensor] = {}

    def hook_for(key: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if "mask" in current:
                x = x[current["mask"].reshape(-1).bool()]
            grams[key] += x.T @ x
        return hook

    handles = [m.register_forward_pre_hook(hook_for(f"{name}.weight")) for name, m in linears.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in _limited(batches, max_examples):
            if "attention_mask" in batch:
                current["mask"] = batch["attention_mask"]
            model(**{key: value for key, value in batch.items() if key != "labels"})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return grams


def unseen_features(grams: Sequence[torch.Tensor], weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Which input features (a bool per input of the weight) no checkpoint's weighted Gram saw: wᵢ·Gᵢ[j, j] = 0 for
    every i, i.e. the calibration batches never made feature j non-zero (or only in checkpoints of weight 0). Each
    Gᵢ being positive semi-definite, row and column j of every wᵢ·Gᵢ are then zero too. All of them: a layer the
    batches never ran (a vision tower on text)."""
    # in float64: a small weight times a small fp16 diagonal would round to 0 and take a seen feature for unseen
    diagonals = torch.stack([float(w) * torch.diagonal(g).double() for g, w in zip(grams, weights)])
    return (diagonals == 0).all(dim=0)


def regularized_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """Scale the off-diagonal entries by alpha (the diagonal is kept)."""
    diagonal = torch.diag(torch.diagonal(gram))
    return alpha * gram + (1.0 - alpha) * diagonal


def _check_grams(grams: Sequence[torch.Tensor], shape: torch.Size, transposed: bool) -> None:
    width = shape[0] if transposed else shape[1]
    bad = next((g for g in grams if g.shape != (width, width)), None)
    if bad is not None:
        layout = "(in, out)" if transposed else "(out, in)"
        other = shape[1] if transposed else shape[0]
        fix = ("pass the Gram of each weight's own layer inputs" if bad.shape != (other, other) else
               "for a weight stored (out, in), pass transposed=False" if transposed else
               "for a Conv1D weight (stored (in, out), see conv1d_weights), pass MergeParams(transposed=True)")
        raise MergeError(f"regmean Gram has shape {tuple(bad.shape)} but the weight {tuple(shape)} stored {layout} "
                         f"takes {width} inputs", None, fix)


class RegMeanMerge(MergeMethod):
    """W* = (Σ w_i·G_i)⁻¹ Σ w_i·G_i·W_iᵀ for 2-D weights with Grams (W_i as stored when ``params.transposed``:
    a Conv1D computes x·W), solved on the input features the Grams saw (``unseen_features``), whose columns keep
    the weighted mean; other tensors, and weights whose Grams saw no feature: weighted mean."""

    statistic = "gram"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.singular = 0  # calls whose solve fell back to the pseudo-inverse (a merge has one instance)
        self.quiet = False  # a merge names them in its report instead (``MergePlan.merge``): not logged here

    def merge(self, tensors: Sequence[torch.Tensor], weights: torch.Tensor, reference: torch.Tensor | None,
              params: MergeParams, generator: torch.Generator | None) -> torch.Tensor:
        mean = AverageMerge("average").merge(tensors, weights, None, MergeParams(), None)
        if params.statistics is None or tensors[0].dim() != 2:
            return mean
        _check_grams(params.statistics, tensors[0].shape, params.transposed)
        seen = ~unseen_features(params.statistics, weights)
        if not seen.any():  # the solve would make the weight zero
            return mean
        # RegMean minimises Σᵢ wᵢ‖Xᵢ(W − Wᵢ)‖² over W (here (in, out): y = x·W). An input feature j that is zero in
        # every Xᵢ leaves row j of W out of it: any value is a minimum, and the pseudo-inverse's minimum-norm one is
        # 0, which drops that input from the layer wherever it does occur (other text at inference). With a ridge,
        # Σᵢ wᵢ(‖Xᵢ(W − Wᵢ)‖² + λ‖W − Wᵢ‖²), the normal equations (Σ wᵢGᵢ + λΣwᵢ·I)W = Σ wᵢ(Gᵢ + λI)Wᵢ decouple
        # (row and column j of every wᵢGᵢ are zero): row j is Σ wᵢWᵢ[j] / Σ wᵢ, the weighted mean, for every λ > 0,
        # and as λ → 0 the seen rows tend to the plain solve on the seen block. So: that solve, and the mean.
        grams = torch.stack([regularized_gram(g.double(), params.regmean_alpha) for g in params.statistics])
        grams = grams * stack_weights(weights.double(), grams)
        # Linear weights are (out, in) and y = x Wᵀ, so the closed form solves for Wᵀ; Conv1D's are Wᵀ already.
        inputs = [t.double() if params.transposed else t.double().T for t in tensors]
        rhs = sum(g @ t for g, t in zip(grams, inputs))[seen]
        solution = (mean if params.transposed else mean.T).double().clone()
        solution[seen] = self._solve(grams.sum(dim=0)[seen][:, seen], rhs)
        return (solution if params.transposed else solution.T).to(weights.dtype)

    def _solve(self, lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """lhs⁻¹·rhs, else the pseudo-inverse's least-norm solution. On the seen features, lhs is positive definite
        at regmean_alpha < 1 with weights ≥ 0 (≥ (1 − alpha)·its diagonal, positive there): only other settings
        (alpha 1 and dependent features, negative weights) reach the fallback, counted in ``singular`` and said once
        per instance (unless ``quiet``: a merge reports it, with a weight named)."""
        try:
            return torch.linalg.solve(lhs, rhs)
        except RuntimeError:
            if not self.singular and not self.quiet:
                logger.warning("RegMean Gram sum is singular on the input features the calibration batches saw; "
                               "using the pseudo-inverse (said once per merge)")
            self.singular += 1
            return torch.linalg.pinv(lhs) @ rhs
