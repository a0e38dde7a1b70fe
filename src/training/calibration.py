"""Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017):
one scalar T > 0 divides every logit, fitted by minimising the negative log-likelihood on held-out (validation)
logits. It changes how confident the model is, never which class it picks (argmax of z / T is argmax of z).

A checkpoint keeps T as the plain float `checkpoint["temperature"]` (weights_only loading still works); the
module applies it in test and predict, src.predict's classifiers apply it, src.export folds it into the graph."""

import torch
from torch import nn

# where a checkpoint keeps its fitted temperature
TEMPERATURE_KEY = "temperature"
# bins of the expected calibration error, as Guo et al. (and torchmetrics' reliability bins here)
ECE_BINS = 15


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T minimising the mean cross-entropy of softmax(logits / T) against `labels`: L-BFGS, as Guo et al.'s
    code, here over log T, which keeps T positive."""
    logits, labels = logits.detach().double().cpu(), labels.detach().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict:
    """NLL and expected calibration error (torchmetrics, 15 bins, L1) of softmax(logits / temperature)."""
    # here: src.predict reads TEMPERATURE_KEY without loading torchmetrics
    from torchmetrics.functional.classification import multiclass_calibration_error

    scaled = logits.detach().double().cpu() / temperature
    labels = labels.detach().cpu()
    return {
        "nll": float(nn.functional.cross_entropy(scaled, labels)),
        "ece": float(
            multiclass_calibration_error(scaled.softmax(-1), labels, scaled.shape[-1], n_bins=ECE_BINS)
        ),
    }


class TemperatureScaled(nn.Module):
    """`model`'s logits divided by a fixed temperature: what src.export writes, so that an exported model's
    softmax gives the calibrated probabilities."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature
