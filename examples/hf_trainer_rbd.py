"""Random-bases descent under the Hugging Face Trainer: a callback registers the hook.

    torchrun --standalone --nproc_per_node 2 examples/hf_trainer_rbd.py

Needs ``transformers`` and ``accelerate`` (not dependencies of rbd). The Trainer wraps
the model in DistributedDataParallel itself, and Accelerate's
``DistributedDataParallelKwargs`` takes only PyTorch's built-in hooks, so
``RBDHookCallback`` registers ``rbd_hook`` on the wrapped model when training begins
(``trainer.model_wrapped`` is the DDP module by then, before the first backward pass).
The Trainer's optimiser is plain SGD without gradient clipping, so it applies the RBD
update Phi^T Phi g that the hook leaves in the gradients.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer, TrainerCallback, TrainingArguments

from rbd.optim.ddp_hook import RBDHookState, rbd_hook


class RBDHookCallback(TrainerCallback):
    """Registers ``rbd_hook`` with ``state`` on the DDP module ``trainer`` trains."""

    def __init__(self, trainer: Trainer, state: RBDHookState):
        self.trainer, self.state = trainer, state

    def on_train_begin(self, args, state, control, **kwargs):
        ddp = self.trainer.model_wrapped
        if not isinstance(ddp, DistributedDataParallel):
            raise RuntimeError(
                f"the Trainer's model is a {type(ddp).__name__}, not DistributedDataParallel: "
                "start several processes (torchrun), or use rbd.optim.RBD in one"
            )
        ddp.register_comm_hook(self.state, rbd_hook)


class Regression(torch.nn.Module):
    """A small MLP that returns the loss as a Trainer expects (a dict with ``loss``)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )

    def forward(self, x, labels=None):
        prediction = self.net(x)
        return {"loss": F.mse_loss(prediction, labels), "logits": prediction}


def teacher_data(size: int) -> list[dict[str, torch.Tensor]]:
    """A fixed random linear teacher's regression task, the same on every rank."""
    weights = torch.randn(20, 1, generator=torch.Generator().manual_seed(1))
    x = torch.randn(size, 20, generator=torch.Generator().manual_seed(2))
    return [{"x": row, "labels": row @ weights} for row in x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dim", type=int, default=50, help="directions per bucket (d)")
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0, help="seeds the shared bases")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Regression()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=32,
            learning_rate=args.lr, optim="sgd", lr_scheduler_type="constant",
            max_grad_norm=0.0, weight_decay=0.0, use_cpu=True, report_to=[],
            save_strategy="no", logging_steps=20, disable_tqdm=True, seed=0,
        )  # fmt: skip
        trainer = Trainer(model=model, args=training, train_dataset=teacher_data(4096))
        state = RBDHookState(seed=args.seed, dim=args.dim)
        trainer.add_callback(RBDHookCallback(trainer, state))
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        same = all(torch.equal(g, flat) for g in gathered)
        print(f"loss every 20 steps: {', '.join(f'{x:.4f}' for x in losses)}")
        print(f"parameters {'identical' if same else 'DIFFER'} on {len(gathered)} workers")
        print(
            f"all-reduced per step: {sum(state.wire_bytes.values())} bytes in "
            f"{len(state.wire_bytes)} bucket(s) of d = {args.dim} "
            f"(plain DDP: {sum(state.bucket_bytes.values())} bytes)"
        )


if __name__ == "__main__":
    main()
