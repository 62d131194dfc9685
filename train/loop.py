"""The one training loop: epochs, steps, evaluation, metrics and checkpoints.

It calls the sync object's hooks around ``optimizer.step()`` and never asks which
training type it runs.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

from dataloaders import Data
from train.divergence import NonFiniteGuard
from train.evaluation import evaluate
from train.preemption import PreemptionWatch
from train.run_state import LoopSettings, Progress, checkpoint_state
from train.sync.base import Sync, TrainingDiverged
from utilities.amp import MixedPrecision
from utilities.checkpoint import save_checkpoint
from utilities.comm_threads import set_comm_thread_policy
from utilities.distributed import CommMeter, all_reduce_sum, replicas_identical, world_size
from utilities.run_files import RunFiles, progress_bar


class ReplicasDiffer(RuntimeError):
    """--check-replicas found ranks holding different models right after a sync."""


class Trainer:
    def __init__(
        self,
        *,
        model,
        optimizer,
        scheduler,
        sync: Sync,
        data: Data,
        files: RunFiles,
        settings: LoopSettings,
        meter: CommMeter,
        device: torch.device,
        rank: int = 0,
        identity: Optional[dict] = None,
        preemption: Optional[PreemptionWatch] = None,
    ):
        self.model, self.optimizer, self.scheduler, self.sync = model, optimizer, scheduler, sync
        self.data, self.files, self.settings, self.meter = data, files, settings, meter
        self.device, self.rank, self.is_main = device, rank, rank == 0
        self.progress = Progress()
        self.amp = MixedPrecision(settings.amp, device)
        self.train_model = sync.prepare(model, optimizer)
        self.identity = identity or {}  # what a checkpoint must match to be resumed
        if "fragments" in self.identity:  # the count streamed, not "auto": it is what a checkpoint's rounds fit
            self.identity["fragments"] = sync.fragments_in_use()
        self.guard = NonFiniteGuard(model, sync, settings.on_nan, scales_gradients=self.amp.scaler is not None)
        self.preemption = preemption  # stops all ranks together on SIGTERM/SIGUSR1

    # ----- training ------------------------------------------------------------------------------
    def finished_steps(self) -> bool:
        return 0 < self.settings.max_steps <= self.progress.step

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple:
        """One optimizer step, accumulating gradients over the micro-batches; returns (loss sum, correct)."""
        micro_inputs = inputs.tensor_split(self.settings.micro_batches)
        micro_targets = targets.tensor_split(self.settings.micro_batches)
        buffers_before = self.guard.snapshot()
        loss_sum, correct = 0.0, 0
        for index, (x, y) in enumerate(zip(micro_inputs, micro_targets)):
            last = index == len(micro_inputs) - 1
            with self.sync.no_sync() if not last else contextlib.nullcontext():
                with self.amp.autocast():
                    logits = self.train_model(x)
                    loss = F.cross_entropy(logits, y)
                # Weighted by size, so the accumulated gradient is that of the whole batch's mean loss.
                self.amp.backward(loss * (len(y) / len(targets)))
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + (logits.detach().argmax(dim=1) == y).sum()
        self.sync.before_step(self.progress.step)
        if self.guard.update_is_finite(loss_sum, self.progress.step, self.optimizer.param_groups[0]["lr"]):
            self.amp.step(self.optimizer)
        else:  # the sync hooks still run, so every rank makes the same collectives
            self.guard.undo(buffers_before)
            self.progress.skipped_steps += 1
            loss_sum, correct = torch.zeros_like(loss_sum), torch.zeros_like(correct)
        # Before the scheduler (SlowMo needs this step's LR) and before the gradients go (torch's
        # PeriodicModelAverager averages only parameters that have one).
        try:
            self.sync.after_step(self.progress.step)
        except TrainingDiverged as error:  # the averaged model is not finite: say when, and at what LR
            lr = self.optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(f"{error} (step {self.progress.step}, lr {lr:.4g})") from None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        if self.settings.check_replicas and self.sync.replicas_agree_now() and not replicas_identical(self.model):
            raise ReplicasDiffer(f"ranks hold different models right after the sync of step {self.progress.step}")
        return loss_sum, correct

    def train_epoch(self, epoch: int) -> dict:
        self.train_model.train()
        # A run resumed from a mid-epoch checkpoint skips the epoch's first batches and keeps its tallies.
        partial, self.progress.epoch_partial = self.progress.epoch_partial, {}
        first_step, epoch_lr = partial.get("steps", 0), partial.get("lr", self.optimizer.param_groups[0]["lr"])
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64, device=self.device)
        correct = torch.tensor(partial.get("correct", 0), dtype=torch.int64, device=self.device)
        images = partial.get("images", 0)
        steps = self.data.train.steps_per_epoch
        started = time.perf_counter() - partial.get("seconds", 0.0)
        bar = progress_bar(steps, first_step, f"epoch {epoch + 1}/{self.settings.epochs}") if self.is_main else None
        for index, (inputs, targets) in enumerate(self.data.train.epoch(epoch, first_step), start=first_step):
            step_loss, step_correct = self.train_step(inputs, targets)
            loss_sum += step_loss
            correct += step_correct
            images += len(targets)
            if bar is not None:
                bar.update()
            elif self.is_main and (index + 1) % self.settings.log_every == 0:
                rate = images * world_size() / (time.perf_counter() - started)
                print(
                    f"epoch {epoch + 1}/{self.settings.epochs} step {index + 1}/{steps} "
                    f"loss {step_loss.item() / len(targets):.4f} lr {self.optimizer.param_groups[0]['lr']:.4g} "
                    f"{rate:.0f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
            if self.finished_steps():
                break
            if self.preemption is not None and self.preemption.due(self.progress.step):
                self.stop_if_preempted(
                    {
                        "steps": index + 1,
                        "lr": epoch_lr,
                        "loss_sum": loss_sum.item(),
                        "correct": correct.item(),
                        "images": images,
                        "seconds": time.perf_counter() - started,
                    }
                )
        if bar is not None:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        total_loss, total_correct, total_images, stopped_ranks = all_reduce_sum(
            [loss_sum.item(), correct.item(), images, self.guard.reason is not None], self.device
        )
        self.guard.check_epoch(stopped_ranks)
        return {
            "train_loss": total_loss / max(total_images, 1),
            "train_accuracy": total_correct / max(total_images, 1),
            "images_per_second": total_images / seconds,
            "train_seconds": seconds,
        }

    def evaluate_epoch(self, epoch: int, final: bool) -> dict:
        if not (final or (epoch + 1) % self.settings.eval_every == 0):
            return {"val_loss": None, "val_accuracy": None, "test_loss": None, "test_accuracy": None}
        with self.sync.eval_model() as model:
            self.check_evaluated(model, f"epoch {epoch + 1}")
            val_loss, val_accuracy = evaluate(model, self.data.val, self.device)
            test_loss, test_accuracy = evaluate(model, self.data.test, self.device)
        return {
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }

    def check_evaluated(self, model: torch.nn.Module, when: str) -> None:
        if self.settings.check_replicas and not replicas_identical(model):
            raise ReplicasDiffer(f"ranks evaluated different models at {when}")

    def run(self):
        """Train from ``self.progress`` to the end and return the summary (None when stopped early by
        --epochs-per-job)."""
        comm_before = self.meter.snapshot()
        first_epoch = self.progress.epoch
        for epoch in range(self.progress.epoch, self.settings.epochs):
            epoch_started = time.perf_counter()
            # Every epoch, not once at start-up: a network thread that has not run yet still bears its
            # creator's name, so a pass right after its group is made can miss it (seen on a loaded machine).
            set_comm_thread_policy(self.settings.comm_thread_policy)
            row = {
                "epoch": epoch + 1,
                "lr": self.progress.epoch_partial.get("lr", self.optimizer.param_groups[0]["lr"]),
            }
            trained_elsewhere = self.sync.train_epoch(epoch, self.data.train, self.device)
            if trained_elsewhere is not None:
                self.progress.step = trained_elsewhere.pop("step")
            row.update(trained_elsewhere or self.train_epoch(epoch))
            settling = time.perf_counter()
            self.sync.settle()  # waiting for a round still in flight is training time
            row["train_seconds"] += time.perf_counter() - settling
            final = epoch + 1 == self.settings.epochs or self.finished_steps()
            row.update(self.evaluate_epoch(epoch, final))
            row.update(self.sync.after_epoch(epoch, row))
            self.progress.epoch = epoch + 1
            self.progress.wall_seconds += time.perf_counter() - epoch_started
            self.progress.train_seconds += row["train_seconds"]
            if row["val_accuracy"] is not None:
                self.progress.best_val_accuracy = max(self.progress.best_val_accuracy, row["val_accuracy"])
            comm = self.meter.snapshot()
            row.update(
                step=self.progress.step,
                wall_seconds=self.progress.wall_seconds,
                **comm,
                epoch_comm_seconds=comm["comm_seconds"] - comm_before["comm_seconds"],
                compute_seconds=row["train_seconds"] - (comm["comm_seconds"] - comm_before["comm_seconds"]),
            )
            comm_before = comm
            self.log_epoch(row)
            save_checkpoint(
                checkpoint_state(self), self.files.checkpoints, epoch + 1, self.settings.keep_checkpoints, self.rank
            )
            if self.finished_steps():
                break
            if self.preemption is not None and epoch + 1 < self.settings.epochs:
                self.stop_if_preempted()
            if (
                self.settings.epochs_per_job
                and epoch + 1 - first_epoch >= self.settings.epochs_per_job
                and epoch + 1 < self.settings.epochs
            ):
                return None  # a later job continues with --resume auto; no final sync that would alter the state
        return self.finish()

    def stop_if_preempted(self, epoch_partial: dict = None) -> None:
        """If any rank got a stop signal (all ranks agree), write a checkpoint here and raise Preempted.
        ``epoch_partial``: where we stand inside the current epoch; None at an epoch's end (just checkpointed)."""
        if not self.preemption.agreed(self.device):
            return
        if epoch_partial is not None:
            self.progress.epoch_partial = epoch_partial
            save_checkpoint(
                checkpoint_state(self),
                self.files.checkpoints,
                self.progress.epoch,
                self.settings.keep_checkpoints,
                self.rank,
                step=self.progress.step,
            )
        self.preemption.stop(self.progress.epoch, self.progress.step)

    def log_epoch(self, row: dict) -> None:
        self.progress.rows.append(row)
        self.files.append_metrics(row)
        if self.is_main:
            shown = {k: row[k] for k in ("train_loss", "val_accuracy", "test_accuracy") if row.get(k) is not None}
            text = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            print(
                f"epoch {row['epoch']}/{self.settings.epochs} step {row['step']} {text} "
                f"{row['images_per_second']:.0f} img/s rounds {row['comm_rounds']}",
                file=sys.stderr,
                flush=True,
            )

    def finish(self) -> dict:
        rounds_before = self.meter.rounds
        self.sync.finish()
        with self.sync.eval_model() as model:
            self.check_evaluated(model, "the end")
            test_loss, test_accuracy = evaluate(model, self.data.test, self.device)
            if self.meter.rounds != rounds_before:  # the final sync changed the model: re-check validation
                _, val_accuracy = evaluate(model, self.data.val, self.device)
                self.progress.best_val_accuracy = max(self.progress.best_val_accuracy, val_accuracy)
        steps = self.progress.step
        comm = self.meter.snapshot()
        images = steps * self.data.train.batch_size * world_size()
        return {
            "final_test_accuracy": test_accuracy,
            "final_test_loss": test_loss,
            "best_val_accuracy": self.progress.best_val_accuracy,
            "steps": steps,
            "epochs": self.progress.epoch,
            **comm,
            # Synchronous SGD agrees once per step: the fraction of those rounds this run saved.
            "comm_reduction": 1 - comm["comm_rounds"] / steps if steps and world_size() > 1 else 0.0,
            "wall_seconds": self.progress.wall_seconds,
            "train_seconds": self.progress.train_seconds,
            "images_per_second": images / self.progress.train_seconds if self.progress.train_seconds else math.nan,
            "world_size": world_size(),
            "skipped_steps": self.progress.skipped_steps,
            # Peak resident memory of this process (rank 0), in MB; Linux reports ru_maxrss in KiB.
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "replicas_identical": replicas_identical(self.model),
        }
