"""Loss functions: the loss value from the model's output and the target, and
the gradient that starts the backward pass.

Classification losses (CrossEntropyLoss, NLLLoss) are written with one
coefficient matrix A over (rows, classes): every setting -- class weights,
label smoothing, ignore_index, probability targets -- only changes A, and
    L = -(1/D) sum_{n,k} A_{n,k} log p_{n,k}
    dL/dz_n = (p_n * sum_k A_{n,k} - A_n) / D        (cross-entropy, through softmax)
    dL/dx_n = -A_n / D                               (NLL on log-probabilities)
with D the mean's denominator (the summed target weights), or 1 for a sum.
Inputs with extra dimensions (N, C, d1, ...) are shown with the class axis
last, one row per (sample, position).

Pointwise regression losses (MSE, L1, smooth L1, Huber, BCE) share one shape
too: an elementwise loss l(x, t), reduced by mean or sum, and its derivative.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage import names
from storage.npmath import (
    class_coefficients,
    cross_entropy_grad,
    cross_entropy_rows,
    probability_coefficients,
    sigmoid,
    softmax,
)
from storage.records import ROLE_OUTPUT

from .. import latex
from .base import (
    Explainer,
    Functional,
    LayerCall,
    StepContext,
    Unsupported,
    as_array,
    build_like_module,
    register,
)
from .common import f64, mat, named

# ---------------------------------------------------------------- classification


def _loss(func) -> Functional:
    """F.cross_entropy(input, target, ...) and the other functional losses: the module
    made from the same settings, with the prediction and the target as its inputs."""
    return Functional(
        (func,),
        build=lambda module_type, a, out: build_like_module(
            module_type, a, out, data=("input", "target")
        ),
    )


class Classification:
    """One call of CrossEntropyLoss or NLLLoss with its class axis moved last."""

    def __init__(self, call: LayerCall):
        module = call.module
        if len(call.inputs) < 2:
            raise Unsupported("no target passed to the loss")
        if module.reduction not in ("mean", "sum", "none"):
            raise Unsupported(f"reduction={module.reduction!r}")
        x = f64(call.x)
        target = call.inputs[1]
        self.class_dim = 0 if x.ndim == 1 else 1
        self.shape = x.shape
        self.rows = np.moveaxis(x, self.class_dim, -1).reshape(
            -1, x.shape[self.class_dim]
        )  # (R, C)
        r, c = self.rows.shape
        self.num_classes = c
        weight = call.buffers.get("weight")
        if weight is None and getattr(module, "weight", None) is not None:
            weight = as_array(module.weight)
        self.weight = f64(weight) if weight is not None else None
        w = self.weight if self.weight is not None else np.ones(c)
        eps = float(getattr(module, "label_smoothing", 0.0))
        self.smoothing = eps
        self.reduction = module.reduction
        self.probability_targets = target.dtype.kind == "f"
        if self.probability_targets:
            if target.shape != x.shape:
                raise Unsupported("probability targets of a different shape than the input")
            t = np.moveaxis(f64(target), self.class_dim, -1).reshape(r, c)
            self.coef = probability_coefficients(t, self.weight, eps)  # (R, C)
            self.valid = np.ones(r, dtype=bool)
            self.labels = None
            self.denominator = float(r)
        else:
            labels = target.astype(np.int64).reshape(-1)
            if labels.size != r:
                raise Unsupported(f"target shape {target.shape} for input shape {x.shape}")
            self.labels = labels
            safe = np.where(labels != module.ignore_index, labels, 0)
            if ((safe < 0) | (safe >= c)).any():
                raise Unsupported("a target class outside [0, C)")
            # (R, C) coefficients and one-hot rows, (R,) counted rows, the mean's D
            self.coef, self.onehot, self.valid, self.denominator = class_coefficients(
                labels, c, self.weight, eps, module.ignore_index
            )
            self.picked_weight = w[safe] * self.valid  # w_{y_n}, 0 where ignored
        self.output_shape = call.output.shape
        self.target_shape = target.shape

    @property
    def plain(self) -> bool:
        """Class indices, no weights, no smoothing, nothing ignored, (N, C) input, reduced."""
        return (
            self.labels is not None
            and self.weight is None
            and not self.smoothing
            and bool(self.valid.all())
            and len(self.shape) == 2
            and self.reduction != "none"
        )

    def scale(self) -> float:
        """1/D for a mean (NaN when every row is ignored, as in PyTorch), 1 for a sum."""
        if self.reduction != "mean":
            return 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return (
                float(np.float64(1.0) / np.float64(self.denominator))
                if self.denominator
                else float("nan")
            )

    def reduce(self, per_row: np.ndarray):
        """Per-row losses (R,) -> the module's output."""
        if self.reduction == "none":
            return per_row.reshape(self.output_shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(per_row.sum() * self.scale()).reshape(self.output_shape)

    def upstream(self, grad_output) -> np.ndarray:
        """dL_total/d(output) per row: one number for mean/sum, one per row for none."""
        g = f64(grad_output)
        return g.reshape(-1, 1) if self.reduction == "none" else np.full((1, 1), g.reshape(-1)[0])

    def back_to_input(self, rows: np.ndarray) -> np.ndarray:
        moved = list(self.shape)
        moved.append(moved.pop(self.class_dim))
        return np.moveaxis(rows.reshape(moved), -1, self.class_dim)

    def words(self) -> str:
        parts = []
        if self.weight is not None:
            parts.append(f"class weights w = {np.array2string(self.weight, precision=4)}")
        if self.smoothing:
            parts.append(
                f"label smoothing eps = {self.smoothing:g}: the target is (1-eps) on the true class "
                f"plus eps/C = {self.smoothing / self.num_classes:.4g} on every class"
            )
        if self.labels is not None and not self.valid.all():
            parts.append(
                f"{int((~self.valid).sum())} row(s) with target = ignore_index contribute nothing"
            )
            if not self.valid.any() and self.reduction == "mean":
                parts.append(
                    "every row is ignored, so the mean is 0/0 = NaN (as in PyTorch) and no gradient flows"
                )
        if self.probability_targets:
            parts.append("targets are class probabilities")
        if self.reduction == "mean":
            what = (
                "the summed weights of the true classes"
                if self.weight is not None
                else "the number of counted rows"
            )
            if self.probability_targets:
                what = "the number of rows"
            parts.append(f"the mean divides by D = {self.denominator:g}, {what}")
        elif self.reduction == "none":
            parts.append("reduction='none': one loss per row, reduced later by the caller")
        return "; ".join(parts)


def _rows_tex(array: np.ndarray) -> str:
    """One row per sample, as the (N, C) tensors are stored and drawn."""
    return latex.bmatrix(array)


@register(nn.CrossEntropyLoss, functional=[_loss(F.cross_entropy)])
class CrossEntropyExplainer(Explainer):
    formula = r"L = -\frac{1}{N}\sum_{n} \log \operatorname{softmax}(z_n)_{y_n}"

    def describe(self, module: nn.CrossEntropyLoss) -> str:
        extra = ""
        if module.weight is not None:
            extra += ", class weights"
        if module.label_smoothing:
            extra += f", label smoothing {module.label_smoothing:g}"
        return f"softmax + negative log-likelihood, {module.reduction} over the batch{extra}"

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        cls = Classification(call)
        z = cls.rows  # (R, C) logits
        n = z.shape[0]
        p, logp, per_row = cross_entropy_rows(z, cls.coef)  # (R, C), (R, C), (R,)
        probs = cls.back_to_input(p)
        probs_name = ctx.tensor("probs", probs, role=ROLE_OUTPUT)
        predicted = probs.argmax(axis=cls.class_dim)
        pred_name = ctx.tensor("predicted", predicted.astype(np.int64), role=ROLE_OUTPUT)
        reference = torch.softmax(
            torch.from_numpy(np.ascontiguousarray(call.x)), dim=cls.class_dim
        ).numpy()
        ctx.step(
            "Softmax: logits to probabilities",
            r"p_{n,k} = \frac{e^{z_{n,k}}}{\sum_j e^{z_{n,j}}}",
            rf"z = {_rows_tex(z)} \;\Rightarrow\; p = {_rows_tex(p)}"
            rf",\quad \hat y = {latex.bmatrix(p.argmax(axis=1)) if n > 1 else int(p[0].argmax())}",
            inputs=[call.input_names[0]],
            outputs=[probs_name, pred_name],
            checks=[(probs, reference, "torch.softmax of the logits")],
            note="Each row of probabilities sums to 1; the predicted class is the largest."
            + (
                " The class axis is dim 1; each row here is one (sample, position)."
                if len(cls.shape) > 2
                else ""
            ),
        )
        loss = cls.reduce(per_row)
        mean = cls.reduction == "mean"
        if cls.plain:
            y = cls.labels
            picked = p[np.arange(n), y]
            onehot_name = None
            terms = " ".join(f"- \\log {latex.scalar(v)}" for v in picked[:6]) + (
                r" - \cdots" if n > 6 else ""
            )
            scale = (rf"\frac{{1}}{{{n}}}" if n > 1 else "") if mean else ""
            formula = (
                r"L = -\frac{1}{N} \sum_{n=1}^{N} \log p_{n, y_n}"
                if mean
                else r"L = -\sum_{n} \log p_{n,y_n}"
            )
            if n == 1:  # one sample: no sum, no 1/N
                values = rf"y = {int(y[0])},\quad L = -\log p_{{{int(y[0])}}} = -\log {latex.scalar(picked[0])}"
            else:
                values = rf"y = {latex.bmatrix(y)},\quad L = {scale}\big({terms}\big)"
            values += rf" = {latex.scalar(float(loss))}"
            note = "Only the probability of the true class enters the loss." + (
                f" The mean over the batch divides by N = {n}." if mean and n > 1 else ""
            )
            inputs = [probs_name, call.input_names[1]]
        else:
            coef_name = ctx.tensor("target_weights", cls.coef)
            onehot_name = coef_name
            d_tex = "D" if mean else "1"
            formula = (
                rf"L = -\frac{{1}}{{{d_tex}}} \sum_{{n,k}} A_{{n,k}} \log p_{{n,k}}"
                if cls.reduction != "none"
                else r"L_n = -\sum_k A_{n,k} \log p_{n,k}"
            )
            if cls.labels is not None:
                formula += r",\quad A_{n,k} = \big[y_n \ne \text{ignore}\big]\Big((1-\varepsilon)\, w_{y_n} [k = y_n] + \frac{\varepsilon}{C} w_k\Big)"
            else:
                formula += r",\quad A_{n,k} = w_k\Big((1-\varepsilon)\, t_{n,k} + \frac{\varepsilon}{C}\Big)"
            shown = mat(loss) if np.ndim(loss) else latex.scalar(float(loss))
            values = (
                rf"A = {_rows_tex(cls.coef)},\quad \log p = {_rows_tex(logp)}"
                + (rf",\quad D = {latex.scalar(cls.denominator)}" if mean else "")
                + rf"\;\Rightarrow\; L = {shown}"
            )
            note = "A says how much each log-probability counts: " + cls.words() + "."
            inputs = [probs_name, call.input_names[1], coef_name]
        if cls.labels is not None:
            onehot_name = ctx.tensor("onehot", cls.onehot.astype(np.float32))
            if not cls.plain:
                inputs.append(onehot_name)
        ctx.step(
            "Cross-entropy loss",
            formula,
            values,
            inputs=inputs,
            outputs=[call.output_name],
            checks=[(loss, call.output, "PyTorch loss value")],
            note=note,
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        cls = Classification(call)
        z = cls.rows
        n = z.shape[0]
        p = softmax(z, axis=1)
        g = cls.upstream(call.grad_output)
        # ignored rows get no gradient, even when the mean is 0/0
        dz_rows = cross_entropy_grad(p, cls.coef, cls.scale(), g, cls.valid)
        dz = cls.back_to_input(dz_rows)
        mean = cls.reduction == "mean"
        upstream = float(g.reshape(-1)[0]) if cls.reduction != "none" else None
        if cls.plain:
            scale = rf"\frac{{1}}{{{n}}}" if mean and n > 1 else ""
            if upstream is not None and upstream != 1.0:
                scale = rf"{latex.scalar(upstream)} \cdot " + scale
            formula = (
                r"\frac{\partial L}{\partial z} = \frac{1}{N}\big(p - \operatorname{onehot}(y)\big)"
            )
            if not mean:
                formula = r"\frac{\partial L}{\partial z} = p - \operatorname{onehot}(y)"
            values = (
                rf"{scale}\Big({_rows_tex(p)} - {_rows_tex(cls.onehot)}\Big) = {_rows_tex(dz_rows)}"
            )
            note = (
                "Softmax and cross-entropy together have this simple gradient: the predicted "
                "probabilities minus the one-hot target"
                + (
                    f", divided by the batch size N = {n} because the loss is a mean."
                    if n > 1 and mean
                    else "."
                )
            )
            inputs = [
                names.intermediate(call.name, "probs"),
                names.intermediate(call.name, "onehot"),
            ]
        else:
            d_tex = r"\frac{1}{D}" if mean else ""
            formula = rf"\frac{{\partial L}}{{\partial z_n}} = {d_tex}\, g_n \Big(p_n \sum_k A_{{n,k}} - A_n\Big)"
            g_tex = (
                latex.scalar(float(g.reshape(-1)[0]))
                if cls.reduction != "none"
                else latex.bmatrix(g.reshape(-1))
            )
            values = (
                rf"g = {g_tex},\ \textstyle\sum_k A_{{n,k}} = {latex.bmatrix(cls.coef.sum(axis=1))}"
                + (rf",\ D = {latex.scalar(cls.denominator)}" if mean else "")
                + rf"\;\Rightarrow\; \frac{{\partial L}}{{\partial z}} = {_rows_tex(dz_rows)}"
            )
            note = (
                "With A the target weights from the forward step, the gradient of -sum_k A_k log p_k "
                "through softmax is p times the row's total weight minus A: probabilities are pushed "
                "towards the (weighted, smoothed) target. g is the gradient arriving from after the loss"
                + (" (one per row, since reduction='none')." if cls.reduction == "none" else ".")
            )
            inputs = [
                names.intermediate(call.name, "probs"),
                names.intermediate(call.name, "target_weights"),
            ]
        ctx.step(
            "Gradient of the loss with respect to the logits",
            formula,
            values,
            inputs=inputs,
            outputs=[call.grad_input_names[0]],
            checks=[(dz, call.grad_inputs[0], "autograd dL/dz")],
            note=note,
        )


@register(nn.NLLLoss, functional=[_loss(F.nll_loss)])
class NLLLossExplainer(Explainer):
    formula = r"L = -\frac{1}{N}\sum_{n} x_{n, y_n}"

    def describe(self, module) -> str:
        extra = ", class weights" if module.weight is not None else ""
        return f"negative log-likelihood of log-probabilities, {module.reduction} over the batch{extra}"

    @staticmethod
    def _cls(call: LayerCall) -> Classification:
        cls = Classification(call)
        if cls.probability_targets:
            raise Unsupported("NLLLoss takes class indices")
        return cls

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        cls = self._cls(call)
        x = cls.rows  # (R, C) log-probabilities
        per_row = -(cls.coef * x).sum(axis=1)
        loss = cls.reduce(per_row)
        coef_name = ctx.tensor("target_weights", cls.coef)
        predicted = cls.back_to_input(x).argmax(axis=cls.class_dim)
        pred_name = ctx.tensor("predicted", predicted.astype(np.int64), role=ROLE_OUTPUT)
        picked = np.where(cls.valid, x[np.arange(len(x)), np.where(cls.valid, cls.labels, 0)], 0.0)
        mean = cls.reduction == "mean"
        shown = mat(loss) if np.ndim(loss) else latex.scalar(float(loss))
        ctx.step(
            "Negative log-likelihood",
            (
                r"L = -\frac{1}{D} \sum_n w_{y_n} x_{n, y_n}"
                if mean
                else r"L = -\sum_n w_{y_n} x_{n,y_n}"
            )
            + (r",\quad D = \sum_n w_{y_n}" if mean else ""),
            rf"x = {_rows_tex(x)},\ y = {latex.bmatrix(cls.labels) if len(cls.labels) > 1 else int(cls.labels[0])}"
            rf",\quad x_{{n,y_n}} = {latex.bmatrix(picked)},\ w_{{y_n}} = {latex.bmatrix(cls.picked_weight)}"
            rf"\;\Rightarrow\; L = {shown}",
            inputs=[call.input_names[0], call.input_names[1]],
            outputs=[coef_name, pred_name, call.output_name],
            checks=[(loss, call.output, "PyTorch loss value")],
            note="The input should be log-probabilities (e.g. from LogSoftmax): the loss picks the "
            "entry of the true class in each row and negates it. " + cls.words().capitalize() + ".",
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        cls = self._cls(call)
        g = cls.upstream(call.grad_output)
        with np.errstate(invalid="ignore", divide="ignore"):
            dx_rows = -cls.coef * cls.scale() * g
        dx_rows[~cls.valid] = 0.0  # ignored rows get no gradient, even when the mean is 0/0
        dx = cls.back_to_input(dx_rows)
        ctx.step(
            "Gradient of the loss with respect to the log-probabilities",
            r"\frac{\partial L}{\partial x_{n,k}} = -\frac{g}{D}\, w_{y_n} [k = y_n]",
            rf"\frac{{\partial L}}{{\partial x}} = {_rows_tex(dx_rows)}",
            inputs=[names.intermediate(call.name, "target_weights"), call.grad_output_name],
            outputs=[call.grad_input_names[0]],
            checks=[(dx, call.grad_inputs[0], "autograd dL/dx")],
            note="Only the true class's entry of each row received a gradient; everything else is 0. "
            "The softmax coupling between classes comes from the LogSoftmax before this loss.",
        )


# ---------------------------------------------------------------- pointwise losses


class PointwiseLossExplainer(Explainer):
    """L = reduce(l(x, t)) with an elementwise l; dL/dx = g * l'(x, t) / (numel if mean)."""

    title = ""
    term = ""  # LaTeX for l(x, t)
    term_grad = ""  # LaTeX for dl/dx
    why = ""

    def terms(self, x, t, call) -> np.ndarray:
        raise NotImplementedError

    def grad_x(self, x, t, call) -> np.ndarray:
        raise NotImplementedError

    def grad_t(self, x, t, call) -> np.ndarray | None:
        return None

    def settings(self, module) -> str:
        return ""

    def describe(self, module) -> str:
        return f"{self.title.lower()}, {module.reduction} over all entries"

    @staticmethod
    def _inputs(call: LayerCall):
        if len(call.inputs) < 2:
            raise Unsupported("no target passed to the loss")
        if call.module.reduction not in ("mean", "sum", "none"):
            raise Unsupported(f"reduction={call.module.reduction!r}")
        x, t = f64(call.inputs[0]), f64(call.inputs[1])
        if x.shape != t.shape:
            raise Unsupported(f"input {x.shape} and target {t.shape} broadcast")
        return x, t

    def _reduce(self, values: np.ndarray, reduction: str):
        if reduction == "none":
            return values
        return np.asarray(values.mean() if reduction == "mean" else values.sum())

    def forward(self, call: LayerCall, ctx: StepContext) -> None:
        x, t = self._inputs(call)
        reduction = call.module.reduction
        terms = self.terms(x, t, call)
        loss = self._reduce(terms, reduction)
        terms_name = ctx.tensor("terms", terms)
        reducer = {"mean": rf"\frac{{1}}{{{x.size}}}\sum", "sum": r"\sum", "none": ""}[reduction]
        constants = self.settings(call.module)
        ctx.step(
            f"{self.title} loss",
            rf"L = {reducer or ''} \ell(x, t)"
            + (r"\ \text{(per entry)}" if reduction == "none" else "")
            + rf",\quad \ell(x, t) = {self.term}",
            (rf"{constants},\quad " if constants else "")
            + rf"{named('x', x)},\ t = {mat(t)} \;\Rightarrow\; \ell = {mat(terms)}"
            + (rf",\quad L = {latex.scalar(float(loss))}" if reduction != "none" else ""),
            inputs=[call.input_names[0], call.input_names[1]],
            outputs=[terms_name, call.output_name],
            checks=[(loss.reshape(call.output.shape), call.output, "PyTorch loss value")],
            note=self.why
            + (f" The mean divides by all {x.size} entries." if reduction == "mean" else "")
            + (" reduction='none' returns every entry's loss." if reduction == "none" else ""),
        )

    def backward(self, call: LayerCall, ctx: StepContext) -> None:
        x, t = self._inputs(call)
        reduction = call.module.reduction
        g = f64(call.grad_output)
        if reduction != "none":
            g = g.reshape(-1)[0]
        n = x.size if reduction == "mean" else 1
        local = self.grad_x(x, t, call)
        dx = g * local / n
        checks = [(dx, call.grad_inputs[0] if call.grad_inputs else None, "autograd dL/dx")]
        outputs = [call.grad_input_names[0]]
        target_grad = call.grad_inputs[1] if len(call.grad_inputs) > 1 else None
        if target_grad is not None:
            local_t = self.grad_t(x, t, call)
            if local_t is None:
                raise Unsupported("a target that requires grad")
            checks.append((g * local_t / n, target_grad, "autograd dL/dt"))
            outputs.append(call.grad_input_names[1])
        scale = rf"\frac{{1}}{{{n}}}" if n > 1 else ""
        g_tex = mat(g) if np.ndim(g) else latex.scalar(float(g))
        ctx.step(
            f"Gradient of the {self.title.lower()} loss",
            r"\frac{\partial L}{\partial x} = "
            + (r"\frac{g}{N}" if reduction == "mean" else "g")
            + r"\, \ell'(x, t),"
            rf"\quad \ell'(x,t) = {self.term_grad}",
            rf"g = {g_tex},\quad {scale}\,{mat(local)} = {mat(dx)}",
            inputs=[call.input_names[0], call.input_names[1], call.grad_output_name],
            outputs=outputs,
            checks=checks,
            note="Each entry's gradient depends on its own prediction and target only"
            + (f"; the mean divides it by N = {n}" if n > 1 else "")
            + ". g is the gradient arriving from after the loss (1 when the loss is the final scalar)."
            + (
                " The target required grad too: its gradient is checked as well."
                if target_grad is not None
                else ""
            ),
        )


@register(nn.MSELoss, functional=[_loss(F.mse_loss)])
class MSELossExplainer(PointwiseLossExplainer):
    formula = r"L = \frac{1}{N} \sum_i (x_i - t_i)^2"
    title = "Mean squared error"
    term = r"(x - t)^2"
    term_grad = r"2 (x - t)"
    why = "Squared differences between prediction and target: large errors count quadratically."

    def terms(self, x, t, call):
        return (x - t) ** 2

    def grad_x(self, x, t, call):
        return 2.0 * (x - t)

    def grad_t(self, x, t, call):
        return -2.0 * (x - t)


@register(nn.L1Loss, functional=[_loss(F.l1_loss)])
class L1LossExplainer(PointwiseLossExplainer):
    formula = r"L = \frac{1}{N} \sum_i |x_i - t_i|"
    title = "L1 (mean absolute error)"
    term = r"|x - t|"
    term_grad = r"\operatorname{sign}(x - t)"
    why = "Absolute differences: every unit of error counts the same. At x = t PyTorch uses sign(0) = 0, and so do we."

    def describe(self, module) -> str:
        return f"L1 loss (absolute error), {module.reduction} over all entries"

    def terms(self, x, t, call):
        return np.abs(x - t)

    def grad_x(self, x, t, call):
        return np.sign(x - t)

    def grad_t(self, x, t, call):
        return -np.sign(x - t)


@register(nn.SmoothL1Loss, functional=[_loss(F.smooth_l1_loss)])
class SmoothL1LossExplainer(PointwiseLossExplainer):
    formula = r"\ell = \begin{cases} \tfrac{(x-t)^2}{2\beta} & |x-t| < \beta \\ |x-t| - \tfrac{\beta}{2} & \text{else} \end{cases}"
    title = "Smooth L1"
    term = formula
    term_grad = r"\begin{cases} (x-t)/\beta & |x-t| < \beta \\ \operatorname{sign}(x-t) & \text{else} \end{cases}"
    why = "Quadratic near 0, linear for large errors: less sensitive to outliers than MSE."

    def settings(self, module) -> str:
        return rf"\beta = {latex.scalar(module.beta)}"

    def terms(self, x, t, call):
        d, b = np.abs(x - t), call.module.beta
        if b == 0:
            return d
        return np.where(d < b, 0.5 * d**2 / b, d - 0.5 * b)

    def grad_x(self, x, t, call):
        d, b = x - t, call.module.beta
        if b == 0:
            return np.sign(d)
        return np.where(np.abs(d) < b, d / b, np.sign(d))

    def grad_t(self, x, t, call):
        return -self.grad_x(x, t, call)


@register(nn.HuberLoss, functional=[_loss(F.huber_loss)])
class HuberLossExplainer(PointwiseLossExplainer):
    formula = r"\ell = \begin{cases} \tfrac12 (x-t)^2 & |x-t| \le \delta \\ \delta (|x-t| - \tfrac{\delta}{2}) & \text{else} \end{cases}"
    title = "Huber"
    term = formula
    term_grad = r"\begin{cases} x-t & |x-t| \le \delta \\ \delta \operatorname{sign}(x-t) & \text{else} \end{cases}"
    why = "Quadratic near 0, linear beyond delta: less sensitive to outliers than MSE."

    def settings(self, module) -> str:
        return rf"\delta = {latex.scalar(module.delta)}"

    def terms(self, x, t, call):
        d, k = np.abs(x - t), call.module.delta
        return np.where(d < k, 0.5 * d**2, k * (d - 0.5 * k))

    def grad_x(self, x, t, call):
        d, k = x - t, call.module.delta
        return np.clip(d, -k, k)

    def grad_t(self, x, t, call):
        return -self.grad_x(x, t, call)


def _buffer(call: LayerCall, name: str):
    value = call.buffers.get(name)
    if value is None and getattr(call.module, name, None) is not None:
        value = as_array(getattr(call.module, name))
    return None if value is None else f64(value)


@register(nn.BCEWithLogitsLoss, functional=[_loss(F.binary_cross_entropy_with_logits)])
class BCEWithLogitsExplainer(PointwiseLossExplainer):
    formula = r"\ell = -w\big[p_w\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))\big]"
    title = "Binary cross-entropy with logits"
    term = formula
    term_grad = r"w\big[(1 - t + p_w t)\,\sigma(x) - p_w t\big]"
    why = (
        "Sigmoid and binary cross-entropy in one stable formula (log sigma(x) = -softplus(-x)); "
        "w weights entries, p_w weights the positive class."
    )

    def describe(self, module) -> str:
        return f"sigmoid + binary cross-entropy, {module.reduction} over all entries"

    @staticmethod
    def _parts(x, call):
        w, pw = _buffer(call, "weight"), _buffer(call, "pos_weight")
        w = 1.0 if w is None else w
        pw = 1.0 if pw is None else pw
        return w, pw, np.logaddexp(0.0, -x)  # softplus(-x) = -log sigma(x)

    def terms(self, x, t, call):
        w, pw, sp = self._parts(x, call)
        return w * (pw * t * sp + (1 - t) * (x + sp))  # -log(1 - sigma(x)) = x + softplus(-x)

    def grad_x(self, x, t, call):

        w, pw, _ = self._parts(x, call)
        return w * ((1 - t + pw * t) * sigmoid(x) - pw * t)

    def grad_t(self, x, t, call):
        w, pw, sp = self._parts(x, call)
        return w * ((pw - 1) * sp - x)


def _clamped_logs(x):
    # PyTorch clamps each log at -100 so that x = 0 or 1 gives a finite loss.
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), -100.0), np.maximum(np.log1p(-x), -100.0)


@register(nn.BCELoss, functional=[_loss(F.binary_cross_entropy)])
class BCELossExplainer(PointwiseLossExplainer):
    formula = r"\ell = -w\big[t \log x + (1 - t) \log(1 - x)\big]"
    title = "Binary cross-entropy"
    term = formula
    term_grad = r"w\, \frac{x - t}{\max\big(x (1 - x),\ 10^{-12}\big)}"
    why = "The input must be probabilities in [0, 1]. PyTorch clamps each log at -100 so that x = 0 or 1 stays finite; so do we."

    def describe(self, module) -> str:
        return f"binary cross-entropy of probabilities, {module.reduction} over all entries"

    @staticmethod
    def _w(call):
        w = _buffer(call, "weight")
        return 1.0 if w is None else w

    def terms(self, x, t, call):
        log_x, log_1mx = _clamped_logs(x)
        return -self._w(call) * (t * log_x + (1 - t) * log_1mx)

    def grad_x(self, x, t, call):
        return self._w(call) * (x - t) / np.maximum(x * (1 - x), 1e-12)

    def grad_t(self, x, t, call):
        log_x, log_1mx = _clamped_logs(x)
        return -self._w(call) * (log_x - log_1mx)
