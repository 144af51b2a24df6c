"""AdamW that moves only the rows a step touched, for ID tables with sparse gradients (``item_table_updates:
sparse``).

With dense AdamW (the paper's, and the default) an ID model's step costs in proportion to the catalogue: the item
table's gradient is a dense [items, d] tensor, mostly zeros, and every row's moments, decay and weight move each
step (and under DDP the whole table is all-reduced). Here an ``nn.Embedding(sparse=True)`` gives a row-sparse
gradient, and a step updates the moments, the decoupled weight decay and the weights of the rows it names
only: a lazy AdamW, as TensorFlow's LazyAdam or torch's SparseAdam (which has no weight decay). Rows a step does
not touch keep their moments as they were instead of decaying them, so the option changes the optimisation
(measured beside the default in bench/README.md). Dense gradients (every other parameter) get the ordinary AdamW
update; training refuses the option where a loss reads the whole table (REC/app/train.py says which).
"""
from __future__ import annotations

import torch


class RowSparseAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                step_size = lr / (1 - beta1 ** t)
                bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    exp_avg = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    state["exp_avg"].index_copy_(0, rows, exp_avg)
                    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                    weights = p[rows].mul_(1 - lr * wd)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    p.index_copy_(0, rows, weights.addcdiv_(exp_avg, denom, value=-step_size))
                    continue
                p.mul_(1 - lr * wd)
                state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-step_size)
        return loss
