"""The two baselines: Hugging Face ``Trainer`` with its defaults, and a plain padded loop.

Both train the same encoded examples (prompt tokens unlabelled) in padded batches of 8 rows,
one example a row, and count as real tokens those under the attention mask. Their window opens
after the first ``warmup`` steps and closes at the first step that ends ``seconds`` later.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from trainer_report import Measured
from transformers import (
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from trainer.batches import IGNORE, Encoded

BATCH_SIZE = 8
NAIVE_LR = 2e-4  # TrainConfig's default; the HF baseline keeps TrainingArguments' 5e-5


class Window:
    """Real tokens and wall time of the steps after the first ``warmup``, for ``seconds``."""

    def __init__(self, warmup: int, seconds: float, device: torch.device) -> None:
        self.warmup, self.seconds, self.device = warmup, seconds, device
        self.began = time.perf_counter()
        self.done = 0  # steps finished, warm-up included
        self.steps = self.tokens = 0
        self.start: float | None = None
        self.end: float | None = None

    def step_done(self, tokens: int) -> bool:
        """Count a finished step of ``tokens`` real tokens; True once the window is over."""
        self.done += 1
        if self.start is None:
            if self.done >= self.warmup:
                self.start = self._now()
            return False
        self.steps += 1
        self.tokens += tokens
        if time.perf_counter() - self.start < self.seconds:
            return False
        self.end = self._now()
        return True

    def measured(self, final_loss: float | None, notes: tuple[str, ...] = ()) -> Measured:
        start = self.start if self.start is not None else self.began
        end = self.end if self.end is not None else self._now()
        return Measured(
            tokens=self.tokens,
            seconds=end - start,
            steps=self.steps,
            final_loss=final_loss,
            warmup_s=start - self.began,
            notes=notes,
        )

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class LossTap:
    """The losses of the model's last forward passes, kept on the device until read."""

    def __init__(self, model: Any, keep: int = 10) -> None:
        self.losses: deque[torch.Tensor] = deque(maxlen=keep)
        self._hook = model.register_forward_hook(self._record)

    def _record(self, module: Any, args: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if loss is not None:
            self.losses.append(loss.detach())

    def mean(self) -> float | None:
        self._hook.remove()
        values = [float(x) for x in self.losses]
        return sum(values) / len(values) if values else None


def hf_trainer_defaults(
    model: Any, tokenizer: Any, encoded: Sequence[Encoded], *, device: torch.device,
    seconds: float, warmup: int,
) -> Measured:  # fmt: skip
    """``transformers.Trainer`` as a user runs it: defaults, batch 8, bf16 on CUDA."""
    window = Window(warmup, seconds, device)
    counts: list[int] = []
    collator = _Counting(
        DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE), counts
    )
    tap = LossTap(model)
    with tempfile.TemporaryDirectory(prefix="hf-trainer-") as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=BATCH_SIZE,
            max_steps=1_000_000,  # the window callback stops it
            bf16=device.type == "cuda",
            use_cpu=device.type == "cpu",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_rows(encoded),
            data_collator=collator,
            callbacks=[_WindowCallback(window, counts)],
        )
        trainer.train()
    del trainer
    return window.measured(tap.mean(), ("loss: mean of the last 10 steps, lr 5e-5 (default)",))


def naive_padded(
    model: Any, encoded: Sequence[Encoded], pad_id: int, *, device: torch.device,
    seconds: float, warmup: int,
) -> Measured:  # fmt: skip
    """A plain PyTorch loop: shuffled batches of 8 padded rows, AdamW, bf16 autocast on CUDA."""
    window = Window(warmup, seconds, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=NAIVE_LR)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses: deque[float] = deque(maxlen=10)
    model.train()
    for batch, tokens in _padded_batches(encoded, pad_id):
        with autocast:
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if window.step_done(tokens):
            break
    note = f"loss: mean of the last 10 steps, lr {NAIVE_LR:g}"
    return window.measured(sum(losses) / max(1, len(losses)), (note,))


class _Counting:
    """A collator that also records each batch's real tokens, in the order batches are made."""

    def __init__(self, inner: Any, counts: list[int]) -> None:
        self.inner, self.counts = inner, counts

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        self.counts.append(int(batch["attention_mask"].sum()))
        return batch


class _WindowCallback(TrainerCallback):
    """Feeds each finished step's real tokens to the window; stops training when it closes."""

    def __init__(self, window: Window, counts: list[int]) -> None:
        self.window, self.counts = window, counts

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.window.step_done(self.counts[state.global_step - 1]):
            control.should_training_stop = True


def _rows(encoded: Sequence[Encoded]) -> list[dict[str, list[int]]]:
    return [
        {"input_ids": list(e.input_ids), "attention_mask": [1] * len(e), "labels": e.labels}
        for e in encoded
    ]


def _padded_batches(
    encoded: Sequence[Encoded], pad_id: int
) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Right-padded batches of 8 examples, epoch after epoch, each freshly shuffled."""
    rng = random.Random(0)
    order = list(range(len(encoded)))
    while True:
        rng.shuffle(order)
        for at in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
            yield _pad([encoded[i] for i in order[at : at + BATCH_SIZE]], pad_id)


def _pad(rows: Sequence[Encoded], pad_id: int) -> tuple[dict[str, torch.Tensor], int]:
    width = max(len(e) for e in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, e in enumerate(rows):
        input_ids[r, : len(e)] = torch.tensor(e.input_ids)
        labels[r, : len(e)] = torch.tensor(e.labels)
        mask[r, : len(e)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    return batch, int(mask.sum())
