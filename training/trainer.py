"""The training loop behind ``training/train.py``.

AdamW with a lower learning rate for the backbone (Sec. IV-B: 1e-4, backbone 5e-5), step decay
x0.1 at the given epochs, gradient clipping, AMP on a GPU, gradient accumulation and
``torchrun`` DDP (gloo on CPU, NCCL on GPU). Checkpoints are written atomically every
``save_every`` optimizer steps and at the end; ``resume`` continues an interrupted run so that
its final weights equal an uninterrupted run's with the same seed (data order, augmentation,
dropout and the position inside the epoch are all restored). SIGTERM/SIGINT save and exit.

Output directory::

    OUT/checkpoint/   latest state: model.safetensors, config.json, tokenizer.json, training_state.pt
    OUT/final/        the trained model: model.safetensors, config.json, tokenizer.json
    OUT/metrics.csv   one row per logged step
    OUT/train_config.json
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from proxyformer.checkpoint import WEIGHTS_NAME, load_weights, read_config, save_checkpoint
from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.state import load_state_checked
from proxyformer.text import load_tokenizer

from .data import build_dataset
from .data.collate import RVOSCollate
from .data.transforms import ClipTransform
from .losses import LossWeights, RVOSCriterion

log = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
# Options that may differ between an interrupted run and its resumption.
_RESUMABLE_CHANGES = ("resume", "epochs", "max_steps", "save_every", "log_every", "workers",
                      "tensorboard", "device")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``train_config.json`` and in every checkpoint."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)  # config changes, e.g. {"cmie.use_p2v": False}
    data: str = "data/synth"
    dataset: str = "ytvos"  # ytvos (also Ref-DAVIS17 and the synthetic set), a2d, jhmdb
    out: str = "runs/tiny"
    epochs: int = 30
    max_steps: int | None = None  # stop after this many optimizer steps
    batch_size: int = 2  # clips per process and micro-batch
    num_frames: int = 8
    lr: float = 1e-4
    lr_backbone: float = 5e-5
    lr_text: float | None = None  # a trainable text encoder's lr; None: the same as lr
    weight_decay: float = 5e-4
    lr_drop: tuple[int, ...] = (20,)  # epochs after which the learning rate is multiplied by 0.1
    lr_drop_steps: tuple[int, ...] = ()  # optimizer steps after which it is multiplied by 0.1
    # "step": the paper's step decay (lr_drop, lr_drop_steps). "cosine": half a cosine from
    # each group's lr down to lr_min_ratio of it over the run's total steps (max_steps or
    # epochs); lr_drop and lr_drop_steps are then unused.
    lr_schedule: str = "step"
    lr_min_ratio: float = 0.0
    clip_max_norm: float = 0.1
    accumulate: int = 1
    workers: int = 1
    seed: int = 42
    save_every: int = 500
    log_every: int = 10
    amp: str = "auto"  # auto (on for CUDA), on, off
    device: str = "auto"
    resume: bool = False
    backbone_weights: str | None = None
    text_weights: str | None = None
    jsc_weight: float = 5.0
    cls_target: str = "matched"  # or "iou": see training.losses.LossWeights
    rank_weight: float = 0.0  # query-ranking loss (training.losses.LossWeights.rank)
    train_scales: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512)
    max_size: int | None = 640
    flip_prob: float = 0.5
    reverse_prob: float = 0.0  # clips played backwards, motion directions swapped (ytvos/davis)
    tensorboard: bool = False  # also log to OUT/tensorboard (needs the tensorboard package)
    pair_expressions: bool = False  # batches of two expressions per clip, different targets
    # Fine-tuning: start from this checkpoint directory's weights. Tensors it lacks (modules the
    # run's config adds, e.g. decoder.video_select) keep their fresh initialisation; a tensor of
    # another shape or one the model does not have is an error.
    init_from: str | None = None
    # Parameter-name prefixes to train (e.g. "heads.selection"); everything else is frozen.
    # Empty: train everything.
    train_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"lr_schedule must be 'step' or 'cosine', got {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.lr_drop_steps:
            raise ValueError(
                f"lr_drop_steps {list(self.lr_drop_steps)} and the cosine schedule both set the "
                "learning rate; use one"
            )
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


# -- fine-tuning ----------------------------------------------------------------------------


def init_weights(model: torch.nn.Module, directory: str | Path) -> list[str]:
    """Load a checkpoint's weights into ``model`` before training (``TrainConfig.init_from``).

    The checkpoint's config may differ from the model's: tensors the checkpoint lacks keep
    their initialisation (logged), while a tensor of another shape, or one the model does not
    have, raises ``ValueError`` (``proxyformer.state.load_state_checked``). Returns the names
    of the tensors that start fresh.
    """
    directory = Path(directory)
    config = read_config(directory)  # raises FileNotFoundError naming a missing config.json
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"--init-from: checkpoint weights not found: {weights}")
    state = load_file(str(weights))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise ValueError(
            f"--init-from {directory}: the model has no tensors {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)}); its config differs: "
            + "; ".join(getattr(model, "config", config).diff(config, ("model", "checkpoint")))
        )
    load_state_checked(model, state, str(weights), strict=False)
    fresh = sorted(set(model.state_dict()) - set(state))
    log.info(
        "initialised from %s (%d tensors); %d tensors start fresh%s", directory, len(state),
        len(fresh), f": {fresh[:6]}{' ...' if len(fresh) > 6 else ''}" if fresh else "",
    )  # fmt: skip
    return fresh


def freeze_except(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Freeze every parameter whose name starts with none of ``prefixes``; each prefix must
    name at least one parameter (``TrainConfig.train_only``)."""
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            top = sorted({name.split(".")[0] for name in names})
            raise ValueError(
                f"--train-only {prefix!r} matches no parameter; top-level modules: {top}"
            )
    trained = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        trained += param.numel() if param.requires_grad else 0
    log.info("training only %s: %d of %d parameters", ", ".join(prefixes), trained,
             sum(p.numel() for p in model.parameters()))  # fmt: skip


def keep_frozen_in_eval(module: torch.nn.Module) -> None:
    """Put every submodule whose parameters are all frozen into eval mode, so that fine-tuning
    with ``train_only`` leaves the frozen part exactly as it was: no BatchNorm running-statistic
    updates, no dropout."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        keep_frozen_in_eval(child)


# -- distributed helpers --------------------------------------------------------------------


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def _any_rank(flag: bool, world: int) -> bool:
    """True on every rank if it is True on any (so all ranks stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value)
    return bool(value.item() > 0)


class EpochSampler(Sampler[int]):
    """A per-epoch permutation from (seed, epoch), split across ranks, startable mid-epoch.

    Every rank gets the same number of indices (the order is padded by wrapping, as
    ``DistributedSampler`` does), so all ranks take the same number of steps.

    With ``groups`` (lists of dataset indices that belong together, e.g. two expressions of
    one video), whole groups are shuffled and dealt to ranks, so a batch whose size is a
    multiple of the group size holds complete groups.
    """

    def __init__(
        self, size: int, rank: int, world: int, seed: int, groups_fn=None, group_size: int = 1
    ) -> None:
        self.size, self.rank, self.world, self.seed = size, rank, world, seed
        self.groups_fn, self.group_size = groups_fn, group_size
        self.epoch, self.start = 0, 0
        units = self.size if groups_fn is None else len(groups_fn(0))
        self.per_rank = math.ceil(units / world) * group_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        units = [[i] for i in range(self.size)] if self.groups_fn is None else self.groups_fn(self.epoch)
        order = [units[i] for i in torch.randperm(len(units), generator=generator).tolist()]
        per_rank_units = self.per_rank // self.group_size
        order += order[: per_rank_units * self.world - len(order)]
        return [index for unit in order[self.rank :: self.world] for index in unit]

    def __iter__(self):
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def expression_pairs(dataset, seed: int):
    """Groups of two clips of one video referring to different objects, new each epoch.

    Two expressions over the same frames that differ in their target can only be told apart
    by reading the text, which the class loss and JSC then have to do.
    """
    from collections import defaultdict

    by_clip = defaultdict(list)
    for index, record in enumerate(dataset.records):
        by_clip[(record.video, record.frame_id)].append(index)

    def pairs(epoch: int) -> list[list[int]]:
        # A str seed is hashed with SHA-512, the same in every process; hash() of a str is
        # salted per process (PYTHONHASHSEED), which made runs and resumed runs differ.
        rng = random.Random(f"{seed}:{epoch}:pairs")
        result = []
        for key in sorted(by_clip):
            indices = list(by_clip[key])
            rng.shuffle(indices)
            while len(indices) >= 2:
                first = indices.pop()
                other = next(
                    (i for i in indices if dataset.records[i].obj_id != dataset.records[first].obj_id),
                    indices[0],
                )
                indices.remove(other)
                result.append([first, other])
        return result

    return pairs


# -- the run --------------------------------------------------------------------------------


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        if config.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        self.rank, self.world = _init_distributed(self.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.out = Path(config.out)
        self.is_main = self.rank == 0
        if config.accumulate < 1 or config.batch_size < 1:
            raise ValueError("batch_size and accumulate must be >= 1")

        random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.model_config = get_preset(config.preset, **config.overrides)
        self.model = build_proxyformer(
            self.model_config, config.backbone_weights, config.text_weights
        ).to(self.device)
        fresh: list[str] = []
        if config.init_from:
            fresh = init_weights(self.model, config.init_from)
        if config.train_only:
            freeze_except(self.model, config.train_only)
            params = dict(self.model.named_parameters())
            frozen_fresh = [n for n in fresh if n in params and not params[n].requires_grad]
            if frozen_fresh:
                raise ValueError(
                    f"--init-from {config.init_from} lacks {frozen_fresh[:6]}"
                    f"{' ...' if len(frozen_fresh) > 6 else ''} ({len(frozen_fresh)} tensors), "
                    f"which --train-only {' '.join(config.train_only)} would freeze at their "
                    "random initialisation; does the run's config (--preset/--set) match the "
                    "checkpoint's?"
                )
        self.tokenizer = load_tokenizer(self.model_config, text_weights=config.text_weights)
        weights = LossWeights(
            jsc=config.jsc_weight, cls_target=config.cls_target, rank=config.rank_weight
        )
        self.criterion = RVOSCriterion(weights)
        if config.jsc_weight == 0:
            self.model.jsc.requires_grad_(False)  # ψ serves only JSC; DDP needs no unused params

        transform = ClipTransform(
            train=True, scales=config.train_scales, max_size=config.max_size,
            flip_prob=config.flip_prob,
        )  # fmt: skip
        self.dataset = build_dataset(
            config.dataset, config.data, "train", config.num_frames, transform, config.seed,
            config.reverse_prob,
        )
        if config.pair_expressions:
            if config.batch_size % 2 or not hasattr(self.dataset, "records"):
                raise ValueError("--pair-expressions needs an even batch size and a Ref-YouTube-VOS-style dataset")
            self.sampler = EpochSampler(len(self.dataset), self.rank, self.world, config.seed,
                                        expression_pairs(self.dataset, config.seed), group_size=2)  # fmt: skip
        else:
            self.sampler = EpochSampler(len(self.dataset), self.rank, self.world, config.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            collate_fn=RVOSCollate(self.tokenizer),
            drop_last=True,
            persistent_workers=False,
            # Its own generator: worker seeds must not consume the global RNG (resume equality).
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.micro_per_epoch = len(self.sampler) // config.batch_size
        self.steps_per_epoch = self.micro_per_epoch // config.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.dataset)} samples give no optimizer step per epoch with batch size "
                f"{config.batch_size} x {config.accumulate} accumulation x {self.world} processes"
            )

        # The fused AdamW kernel (CPU and CUDA): one pass over all parameters instead of a
        # Python loop over ~400 tensors, about 3x faster per step on the tiny model's CPU run.
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=config.lr, weight_decay=config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )  # fmt: skip
        # The epoch milestones of the step schedule; the cosine schedule sets the lr per step.
        milestones = list(config.lr_drop) if config.lr_schedule == "step" else []
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=milestones, gamma=0.1
        )
        use_amp = config.amp == "on" or (config.amp == "auto" and self.device.type == "cuda")
        if use_amp and self.device.type != "cuda":
            raise ValueError("--amp on needs a CUDA device")
        self.amp_dtype = (
            torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        ) if use_amp else None  # fmt: skip
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step, self.epoch, self.micro_in_epoch = 0, 0, 0
        self._stop_signal: str | None = None
        self.writer = None
        if config.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _param_groups(self) -> list[dict]:
        groups = {"backbone": [], "text": [], "rest": []}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("backbone."):
                groups["backbone"].append(param)
            elif name.startswith("text_encoder.body."):
                groups["text"].append(param)
            else:
                groups["rest"].append(param)
        lr_text = self.config.lr if self.config.lr_text is None else self.config.lr_text
        lrs = {"backbone": self.config.lr_backbone, "text": lr_text, "rest": self.config.lr}
        return [
            {"params": params, "lr": lrs[name], "name": name}
            for name, params in groups.items()
            if params
        ]

    # -- checkpoints -------------------------------------------------------------------------

    def _training_state(self) -> bytes:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "train_config": json.dumps(self.config.to_dict()),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()

    def save(self, directory: Path, with_state: bool = True) -> None:
        if not self.is_main:
            return
        extra = {STATE_NAME: self._training_state()} if with_state else None
        save_checkpoint(
            self.model, directory, tokenizer=self.tokenizer, extra_files=extra,
            metadata={"step": str(self.step), "epoch": str(self.epoch)},
        )  # fmt: skip

    def restore(self, directory: Path) -> None:
        state_path = directory / STATE_NAME
        if not state_path.is_file():
            raise FileNotFoundError(f"no training state to resume from: {state_path}")
        load_weights(self.model, directory)
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = json.loads(state["train_config"])
        differing = {
            k: (saved.get(k), v)
            for k, v in self.config.to_dict().items()
            if k not in _RESUMABLE_CHANGES
            and json.loads(json.dumps(v)) != saved.get(k)
        }
        if differing:
            raise ValueError(f"cannot resume {directory} with other options: {differing} (saved, now)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed %s at step %d (epoch %d)", directory, self.step, self.epoch)

    # -- the loop ----------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint after this step", self._stop_signal)

    def _log_row(self, row: dict) -> None:
        if not self.is_main:
            return
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, row["step"])
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_metrics(self) -> None:
        """Drop rows logged after the resumed step (an interrupted run may have logged more)."""
        path = self.out / "metrics.csv"
        if not self.is_main or not path.exists():
            return
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(r["step"]) <= self.step]
        with open(path, "w", newline="") as handle:
            if kept:
                writer = csv.DictWriter(handle, fieldnames=list(kept[0]))
                writer.writeheader()
                writer.writerows(kept)

    def total_steps(self) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def train(self) -> Path:
        """Run (or resume) training; returns the directory of the final model."""
        config = self.config
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        checkpoint_dir = self.out / "checkpoint"
        if config.resume:
            if (checkpoint_dir / STATE_NAME).is_file():
                self.restore(checkpoint_dir)
                self._truncate_metrics()
            else:
                log.warning("--resume: no checkpoint in %s, starting from scratch", checkpoint_dir)
        elif self.is_main and (self.out / "metrics.csv").exists():
            (self.out / "metrics.csv").unlink()  # a fresh run starts a fresh log

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        total = self.total_steps()
        progress = tqdm(
            total=total, initial=self.step, desc="train", unit="step", disable=not self.is_main
        )
        self.model.train()
        if config.train_only:
            keep_frozen_in_eval(self.model)
        started = time.perf_counter()
        running: dict[str, float] = {}
        logged_steps = 0
        try:
            while self.epoch < config.epochs and self.step < total:
                self.sampler.set_epoch(self.epoch, self.micro_in_epoch * config.batch_size)
                self.dataset.set_epoch(self.epoch)
                for batch in self.loader:
                    self.micro_in_epoch += 1
                    sync = self.micro_in_epoch % config.accumulate == 0
                    losses = self._micro_step(batch, sync)
                    for key, value in losses.items():
                        running[key] = running.get(key, 0.0) + value / config.accumulate
                    if not sync:
                        continue
                    grad_norm = self._optimizer_step()
                    self.step += 1
                    if self.step in config.lr_drop_steps:
                        # The lr lives in the optimizer's param groups, so resume restores it.
                        for group in self.optimizer.param_groups:
                            group["lr"] *= 0.1
                    logged_steps += 1
                    running["grad_norm"] = running.get("grad_norm", 0.0) + grad_norm
                    progress.update(1)
                    if self.step % config.log_every == 0 or self.step == total:
                        row = {"step": self.step, "epoch": self.epoch}
                        row |= {f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups}
                        row["seconds"] = round(time.perf_counter() - started, 2)
                        # Means over the steps since the last row.
                        row |= {k: round(v / logged_steps, 6) for k, v in running.items()}
                        self._log_row(row)
                        progress.set_postfix(loss=f"{row['loss']:.3f}")
                        running, logged_steps = {}, 0
                    stop = _any_rank(self._stop_signal is not None, self.world)
                    if stop or self.step % config.save_every == 0 or self.step >= total:
                        self.save(checkpoint_dir)
                    if stop:
                        log.warning("stopped by signal at step %d; resume with --resume", self.step)
                        return checkpoint_dir
                    if self.step >= total:
                        break
                else:
                    # A partial accumulation at the end of an epoch is dropped, not carried over.
                    self.optimizer.zero_grad(set_to_none=True)
                    self.epoch += 1
                    self.micro_in_epoch = 0
                    self.scheduler.step()
                    continue
                break  # max_steps reached inside the epoch
        finally:
            progress.close()
            if self.writer is not None:
                self.writer.flush()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        final = self.out / "final"
        self.save(final, with_state=False)
        if self.world > 1:
            dist.barrier()
        log.info("finished %d steps in %.0f s: %s", self.step, time.perf_counter() - started, final)
        return final

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """A collated batch -> frames, text ids, text mask and targets on the run's device."""
        frames = batch["frames"].to(self.device, non_blocking=True)
        ids = batch["text_ids"].to(self.device)
        mask = batch["text_mask"].to(self.device)
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch["targets"]]
        return frames, ids, mask, targets

    def _autocast(self):
        """The forward pass's autocast context (AMP on CUDA), or a no-op."""
        if self.amp_dtype:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return nullcontext()

    def _micro_step(self, batch: dict, sync: bool) -> dict[str, float]:
        frames, ids, mask, targets = self._to_device(batch)
        no_sync = self.ddp_model.no_sync if (self.world > 1 and not sync) else nullcontext
        with no_sync():
            with self._autocast():
                outputs = self.ddp_model(frames, ids, mask)
            outputs = _to_float(outputs)  # losses in FP32
            losses = self.criterion(outputs, targets)
            self.scaler.scale(losses["loss"] / self.config.accumulate).backward()
        return {k: float(v.detach()) for k, v in losses.items() if k != "matched" and v.dim() == 0}

    def lr_factor(self, step: int) -> float:
        """The cosine schedule's multiplier of each group's base lr for optimizer step ``step``
        (0-based): 1 for the first, falling to ``lr_min_ratio`` at the run's total steps. It
        depends on the total, so a resumed run keeps its schedule only with the same
        ``max_steps``/``epochs``."""
        progress = min(step / max(self.total_steps(), 1), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.config.lr_min_ratio + (1.0 - self.config.lr_min_ratio) * cosine

    def _optimizer_step(self) -> float:
        if self.config.lr_schedule == "cosine":
            factor = self.lr_factor(self.step)
            for group in self.optimizer.param_groups:  # initial_lr: set by the MultiStepLR
                group["lr"] = group["initial_lr"] * factor
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_max_norm or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def _to_float(outputs):
    if torch.is_tensor(outputs):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs


def train(config: TrainConfig) -> Path:
    """Train (or resume) with ``config``; returns the final model directory."""
    return Trainer(config).train()
