"""Trace a Hugging Face `Trainer` with `tracer.huggingface.CnnvizCallback`.

Needs:  pip install transformers accelerate
Run:    python examples/huggingface_callback.py runs.db
"""

import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from tracer.huggingface import CnnvizCallback


class TinyClassifier(nn.Module):
    """Any nn.Module whose forward takes the batch's fields and returns the loss."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, features, labels=None):
        logits = self.head(F.gelu(self.hidden(features)))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def main(db="runs.db", steps=6, every=2, traced=True):
    torch.manual_seed(0)
    rows = [{"features": torch.randn(4), "labels": int(i % 3)} for i in range(48)]
    model = TinyClassifier()
    callback = CnnvizCallback(db, every=every, name="huggingface")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=0.05,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=rows, callbacks=[callback] if traced else []
        )
        trainer.train()
    return callback.trace if traced else None, model


if __name__ == "__main__":
    trace, _ = main(sys.argv[1] if len(sys.argv) > 1 else "runs.db")
    print(f"run {trace.run_id} stored {trace.stored} iterations")
