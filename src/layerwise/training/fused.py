"""A fused fine-tuning step for the classifier that ``stack.build_classifier`` makes.

That net is ``[Dropout] Linear Sigmoid ... [Dropout] Linear``. Autograd runs it as about
twenty small operations per batch, each with its own allocation and bookkeeping, and
``nn.Dropout`` on the CPU draws every mask element with ``bernoulli_`` (about 10 ns an
element here). ``FusedClassifierStep`` computes the same loss and the same gradients by
hand:

- each layer is one ``addmm`` (bias, inputs, weights) with the sigmoid applied in place;
- a dropout mask is one draw of 64 random bits per four units, compared as 16-bit
  integers with the keep threshold: unit j is dropped with probability
  ``round(p * 65536) / 65536`` (p within 1e-5), and the 1/(1-p) scale is folded into the
  products that read the dropped activations;
- the backward pass is three products per layer (one for the first) and one fused
  sigmoid derivative; a plain SGD is applied inside the weight-gradient products (the
  momentum as the product's beta), any other optimizer gets ``.grad`` and its own step;
- activations, gradients and masks live in buffers kept between steps;
- in bf16 (``precision="bf16"``) every product reads bfloat16 copies of its operands and
  writes a bfloat16 result, which is added to the fp32 activations, gradients and
  momentum buffers; the weights, the sigmoid, the loss and the update stay fp32;
- the masks draw from the default generator of the data's device, as ``nn.Dropout``
  does, so a checkpoint of that generator makes a resumed run exact.

The arithmetic is the same as autograd's up to float rounding (a test checks the
gradients against autograd's on the same masks); the masks differ from ``nn.Dropout``'s
draws, so the trained weights are not bitwise those of the autograd step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 65536  # a mask compares 16-bit integers: p is rounded to a multiple of 1/65536


class FusedClassifierStep:
    """One SGD step of the classifier ``model`` (products in fp32, or in bf16), or None
    from ``make`` when the model is not a ``build_classifier`` net. ``masks`` (tests only)
    fixes the dropout masks: a list with one boolean "kept" tensor (or None) per layer."""

    def __init__(self, layers: list[tuple[float, nn.Linear, bool]], precision: str = "fp32"):
        self.layers = layers  # (dropout before, linear, sigmoid after)
        self.low = torch.bfloat16 if precision == "bf16" else None  # the products' operand type
        self.params = {id(t) for _, lin, _ in layers for t in (lin.weight, lin.bias)}
        self._masks: dict[tuple, tuple] = {}  # (rows x units, device, layer): random words, kept mask
        self._steps: dict[tuple, list] = {}  # (rows, device, dtype): per layer, activations and gradients
        self._owned: set[int] = set()  # data pointers of the momentum buffers this step allocated

    @classmethod
    def make(cls, model: nn.Module, precision: str = "fp32") -> FusedClassifierStep | None:
        if type(model) is not nn.Sequential or "forward" in vars(model):
            return None  # a subclass or a replaced forward computes something else
        if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()):
            return None  # hooks expect to see autograd's forward
        if not all(p.requires_grad for p in model.parameters()):
            return None  # frozen layers: autograd's step leaves them as they are
        layers, p = [], 0.0
        mods = list(model)
        i = 0
        while i < len(mods):
            m = mods[i]
            if type(m) is nn.Dropout and p == 0.0:
                p = float(m.p)
                i += 1
                continue
            if type(m) is not nn.Linear or m.bias is None:
                return None
            sigmoid = i + 1 < len(mods) and type(mods[i + 1]) is nn.Sigmoid
            layers.append((p, m, sigmoid))
            p, i = 0.0, i + (2 if sigmoid else 1)
        if not layers or layers[-1][2] or p != 0.0 or any(not s for _, _, s in layers[:-1]):
            return None  # it must end in a plain linear head, with a sigmoid after every other layer
        return cls(layers, precision)

    def _kept(self, shape: torch.Size, p: float, device: torch.device, layer: int = 0) -> torch.Tensor:
        """A float mask of 1 (kept) and 0 (dropped), units dropped with probability p
        (rounded to a multiple of 1/65536). Its buffer is reused by the next step."""
        n = shape[0] * shape[1]
        key = (n, device, layer)  # one per layer: the backward pass reads them all
        if key not in self._masks:
            self._masks[key] = (
                torch.empty((n + 3) // 4, dtype=torch.int64, device=device),
                torch.empty(shape, dtype=torch.float32, device=device),
            )
        words, kept = self._masks[key]
        words.random_(-(2**63), None)  # 64 random bits from the device's default generator
        draws = words.view(torch.int16)[:n].view(shape)
        return torch.ge(draws, -32768 + round(p * _LEVELS), out=kept.view(shape))

    def _buffers(self, xb: torch.Tensor) -> list[dict]:
        """Per layer, the step's activations and gradients, made once per batch shape and
        device: a fresh tensor of this size is a fresh mmap on the CPU, and its page
        faults cost as much as a small product."""
        key = (xb.shape[0], xb.device, xb.dtype)
        bufs = self._steps.get(key)
        if bufs is None:
            n, new = xb.shape[0], lambda *shape: torch.empty(shape, dtype=xb.dtype, device=xb.device)
            bufs = self._steps[key] = [
                {
                    "input": new(n, lin.in_features),
                    "out": new(n, lin.out_features),
                    "d_in": new(n, lin.in_features),
                    "d_pre": new(n, lin.in_features),
                }
                for _, lin, _ in self.layers
            ]
            if self.low is not None:  # the products' bf16 operands and results
                low = lambda *shape: torch.empty(shape, dtype=self.low, device=xb.device)  # noqa: E731
                for b, (_, lin, _) in zip(bufs, self.layers):
                    i, o = lin.in_features, lin.out_features
                    b.update(
                        input_low=low(n, i),
                        weight_low=low(o, i),
                        out_low=low(n, o),
                        d_low=low(n, o),
                        d_in_low=low(n, i),
                        grad_low=low(o, i),
                    )
        return bufs

    def _low(self, t: torch.Tensor, buf: dict, name: str) -> torch.Tensor:
        """t as an operand of a product: t itself in fp32, else its bf16 copy in buf[name]."""
        return t if self.low is None else buf[name].copy_(t)

    def _gemm(
        self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float, buf: dict, name: str
    ) -> torch.Tensor:
        """out = beta * out + alpha * a @ b (beta 0 ignores out's contents); in bf16 the
        product of the bf16 operands a and b lands in buf[name] and is added in fp32."""
        if self.low is None:
            return out.addmm_(a, b, beta=beta, alpha=alpha)
        prod = torch.mm(a, b, out=buf[name])
        if beta == 0.0:
            out.copy_(prod)
            return out if alpha == 1.0 else out.mul_(alpha)
        return out.mul_(beta).add_(prod, alpha=alpha)

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor, optimizer: torch.optim.Optimizer, masks: list | None = None
    ) -> torch.Tensor:
        """Forward, loss, backward and the optimizer's step; returns the mean cross-entropy
        as a tensor on the device (no sync). A plain ``torch.optim.SGD`` (one group, no
        dampening, no Nesterov) is applied inside the gradient products (its momentum
        buffers are the optimizer's own); any other optimizer gets ``.grad`` and steps."""
        sgd = _plain_sgd(optimizer, self.params, self._owned)
        bufs = self._buffers(xb)
        saved = []  # per layer: its input (dropped units zeroed), that input's kept mask, 1/(1-p)
        h = xb
        with torch.no_grad():
            for k, (p, lin, sigmoid) in enumerate(self.layers):
                kept, scale = None, 1.0
                if p > 0:
                    kept = masks[k].to(h.dtype) if masks is not None else self._kept(h.shape, p, h.device, k)
                    # never write into the caller's batch
                    h = torch.mul(h, kept, out=bufs[k]["input"]) if k == 0 else h.mul_(kept)
                    scale = 1.0 / (1.0 - p)
                b = bufs[k]
                h_low, w_low = self._low(h, b, "input_low"), self._low(lin.weight, b, "weight_low")
                saved.append((h, h_low, w_low, kept, scale))
                if self.low is None:
                    h = torch.addmm(lin.bias, h, lin.weight.t(), alpha=scale, out=b["out"])
                else:
                    h = torch.add(lin.bias, torch.mm(h_low, w_low.t(), out=b["out_low"]), alpha=scale, out=b["out"])
                if sigmoid:
                    h.sigmoid_()
            n = h.shape[0]
            log_probs = torch.log_softmax(h, 1)
            loss = F.nll_loss(log_probs, yb)
            d = log_probs.exp_()  # the softmax
            d[torch.arange(n, device=d.device), yb] -= 1.0
            d.mul_(1.0 / n)  # d (mean loss) / d logits
            ones = torch.ones(n, dtype=d.dtype, device=d.device)
            for k in range(len(self.layers) - 1, -1, -1):
                _, lin, _ = self.layers[k]
                h_in, h_low, w_low, kept, scale = saved[k]
                b = bufs[k]
                d_low = self._low(d, b, "d_low")
                if k > 0:  # the gradient of this layer's input, before its weights change
                    dh = self._gemm(b["d_in"], d_low, w_low, 0.0, scale, b, "d_in_low")
                    if kept is not None:
                        dh.mul_(kept)
                if sgd is None:
                    self._gemm(_grad(lin.weight), d_low.t(), h_low, 0.0, scale, b, "grad_low")
                    _grad(lin.bias).addmv_(d.t(), ones, beta=0.0)
                else:
                    # each product is called at once by sgd, inside this iteration
                    sgd(lin.weight, lambda buf, beta: self._gemm(buf, d_low.t(), h_low, beta, scale, b, "grad_low"))  # noqa: B023
                    sgd(lin.bias, lambda buf, beta: buf.addmv_(d.t(), ones, beta=beta))  # noqa: B023
                if k == 0:
                    break
                # h_in holds the sigmoid outputs (zero where dropped, where dh is zero too)
                d = torch.ops.aten.sigmoid_backward.grad_input(dh, h_in, grad_input=bufs[k]["d_pre"])
        if sgd is None:
            optimizer.step()
        return loss


def _grad(param: torch.Tensor) -> torch.Tensor:
    """param.grad, made once and then overwritten by each step (beta=0 ignores its contents)."""
    if param.grad is None or param.grad.shape != param.shape:
        param.grad = torch.zeros_like(param)
    return param.grad


def _plain_sgd(optimizer: torch.optim.Optimizer, params: set[int], owned: set[int]):
    """For a plain SGD: update(param, product) with product(buf, beta) accumulating the
    gradient into buf scaled by beta, doing what ``torch.optim.SGD.step`` does::

        g = grad + weight_decay * param;  buf = momentum * buf + g (buf = g at first);  param -= lr * buf

    Otherwise None; also when the optimizer does not hold exactly the net's parameters."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if {id(t) for t in group["params"]} != params:
        return None
    if group["dampening"] or group["nesterov"] or group["maximize"] or not isinstance(group["lr"], float):
        return None
    lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]

    def update(param: torch.Tensor, product) -> None:
        if not momentum:
            g = product(_grad(param), 0.0)
            if decay:
                g.add_(param, alpha=decay)
            param.add_(g, alpha=-lr)
            return
        state = optimizer.state[param]
        buf = state.get("momentum_buffer")
        if buf is not None and buf.data_ptr() not in owned:
            # a buffer from elsewhere (a loaded checkpoint: a view into the file's storage)
            # becomes a fresh allocation, as in the run that saved it: the product's
            # rounding with beta != 0 can depend on where its output lies in memory
            buf = state["momentum_buffer"] = buf.clone(memory_format=torch.contiguous_format)
            owned.add(buf.data_ptr())
        if buf is None:  # the first step: buf = g
            buf = state["momentum_buffer"] = product(torch.zeros_like(param), 0.0)
            owned.add(buf.data_ptr())
        else:
            product(buf, momentum)
        if decay:
            buf.add_(param, alpha=decay)
        param.add_(buf, alpha=-lr)

    return update
