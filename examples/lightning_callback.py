"""Trace a PyTorch Lightning `Trainer.fit` with `tracer.lightning.CnnvizCallback`.

Needs:  pip install lightning
Run:    python examples/lightning_callback.py runs.db
"""

import sys

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracer.lightning import CnnvizCallback


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self(x), y)  # self(x): the traced forward
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main(db="runs.db", steps=6, every=2, traced=True, callbacks=()):
    pl.seed_everything(0, verbose=False)
    data = TensorDataset(torch.randn(48, 4), torch.randint(0, 3, (48,)))
    module = Classifier()
    cnnviz = CnnvizCallback(db, every=every, criterion="loss_fn", name="lightning")
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=[cnnviz, *callbacks] if traced else list(callbacks),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    return cnnviz.trace if traced else None, module


if __name__ == "__main__":
    trace, _ = main(sys.argv[1] if len(sys.argv) > 1 else "runs.db")
    print(f"run {trace.run_id} stored {trace.stored} iterations")
