"""The options of a ``training/train.py`` run (``TrainConfig``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Options that may differ between an interrupted run and its resumption. The output directory
# is one: a run moved elsewhere resumes from where it is now.
RESUMABLE_CHANGES = ("resume", "overwrite", "out", "epochs", "max_steps", "save_every",
                     "log_every", "workers", "tensorboard", "device")  # fmt: skip
# Options naming files or directories: saved and compared resolved (training.rundir).
PATH_OPTIONS = ("data", "out", "backbone_weights", "text_weights", "init_from")


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
    resume: bool = False  # continue the run in out (training.rundir: what it checks)
    overwrite: bool = False  # replace a run already in out (otherwise it is refused)
    backbone_weights: str | None = None
    text_weights: str | None = None
    jsc_weight: float = 5.0
    cls_target: str = "matched"  # or "iou": see training.losses.LossWeights
    train_scales: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512)
    max_size: int | None = 640
    flip_prob: float = 0.5
    reverse_prob: float = 0.0  # clips played backwards, motion directions swapped (ytvos/davis)
    tensorboard: bool = False  # also log to OUT/tensorboard (needs the tensorboard package)
    pair_expressions: bool = False  # batches of two expressions per clip, different targets
    # Fine-tuning: start from this checkpoint directory's weights. Tensors it lacks (modules
    # the run's config adds, e.g. extensions.video_select) keep their fresh initialisation; a
    # tensor of another shape or one the model does not have is an error.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: pass one")
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
        """The options as plain JSON-ready values (tuples stay tuples until dumped)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """The config of ``to_dict``'s (or ``train_config.json``'s) values; lists become
        tuples, and an unknown option is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)
