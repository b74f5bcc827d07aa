"""The base LightningModule ("system") that every model shares.

A system wraps a plain ``nn.Module`` (``forward(images, max_length=None) -> logits``) and owns what all models
need: the tokenizer, the validation/test step and its metrics, optimiser and scheduler set-up with the LR scaling
rule, stochastic weight averaging, and logging. A model's system only adds its training loss (and, for unusual
models, its own validation loss).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
import weakref
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from PIL import Image
from torch import Tensor, nn
from torchmetrics import MeanMetric

from strhub.data.charsets import resolve_charset
from strhub.data.preprocess import Preprocess
from strhub.data.tokenizer import CharTokenizer, CTCTokenizer, Tokenizer
from strhub.metrics import RecognitionMetrics, TextNormalizer
from strhub.models import registry

log = logging.getLogger(__name__)

OPTIMIZERS = {
    'adamw': torch.optim.AdamW,
    'adam': torch.optim.Adam,
    'adadelta': torch.optim.Adadelta,
    'sgd': torch.optim.SGD,
}
SCHEDULERS = ('onecycle', 'cosine_warm_restarts', 'cosine', 'constant')


class TimeBudgetOneCycle:
    """OneCycle's shape (linear warm-up, cosine decay to ``final_ratio``) over whichever ends first: ``total_steps``
    or ``budget_s`` seconds of training time. A recipe meant to fit a time budget thus anneals fully on any machine
    (set ``trainer.max_time`` to the same budget and ``max_steps`` to an upper bound).

    Progress is ``max(step / total_steps, elapsed / budget_s)``. The elapsed training time is kept in the
    scheduler's state (``elapsed_s``), so a resumed run continues where it stopped; the time between the stop and
    the resume does not count.
    """

    # This process's (monotonic clock, elapsed_s) when the current run (fresh or resumed) took its first step.
    # Kept outside the instance so that it is not saved with the scheduler state.
    _sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, total_steps: int, budget_s: float, warmup_pct: float, final_ratio: float = 1e-3) -> None:
        if budget_s <= 0:
            raise ValueError(f'scheduler.time_budget_s is {budget_s}; give the training time budget in seconds')
        self.total_steps = max(1, total_steps)
        self.budget_s = budget_s
        self.warmup_pct = warmup_pct
        self.final_ratio = final_ratio
        self.elapsed_s = 0.0

    def __call__(self, step: int) -> float:
        if step > 0:  # step 0 is the scheduler's construction, before training (and before a resume's state)
            now = time.monotonic()
            start, base = self._sessions.setdefault(self, (now, self.elapsed_s))
            self.elapsed_s = base + now - start
        progress = min(1.0, max(step / self.total_steps, self.elapsed_s / self.budget_s))
        if progress < self.warmup_pct:
            return max(progress / self.warmup_pct, 1e-3)
        decay = (progress - self.warmup_pct) / max(1e-9, 1.0 - self.warmup_pct)
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * decay))


SYSTEM_KEY = 'strhub_system'  # checkpoint entry naming the system class that rebuilds the model

# The epoch-level validation figures come from torchmetrics' compute(), which already sums the states of all DDP
# ranks; Lightning cannot tell and recommends sync_dist=True, which would only average identical values.
warnings.filterwarnings(
    'ignore', r"It is recommended to use `self\.log\('(val_accuracy|val_NED|hp_metric)'", PossibleUserWarning
)


def check_kwargs(target: type, kwargs: Mapping[str, Any], what: str, set_elsewhere: Iterable[str] = ()) -> None:
    """Raises a ValueError listing the valid names when ``kwargs`` has a key ``target.__init__`` does not take.
    ``set_elsewhere``: arguments the caller passes itself, left out of the valid names.

    Walks the MRO for classes whose ``__init__`` forwards ``**kwargs`` to their parent.
    """
    valid: set[str] = set()
    for cls in target.__mro__:
        if '__init__' not in vars(cls) or cls in (nn.Module, pl.LightningModule, object):
            continue
        params = inspect.signature(cls.__init__).parameters
        valid |= {n for n, p in params.items() if n != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    valid -= set(set_elsewhere)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f'unknown {what} key(s) {unknown} for {target.__name__}; valid keys: {sorted(valid)}')


def positive_number(key: str, value: Any, kind: type = int) -> Any:
    """``value`` of config key ``key`` as a positive ``kind`` (int or float); a ValueError naming the key otherwise."""
    what = 'a positive integer' if kind is int else 'a positive number'
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ValueError(f'{key} must be {what}, got {value!r} (a {type(value).__name__})')
    if not value > 0:
        raise ValueError(f'{key} must be {what}, got {value!r}')
    return kind(value)


EMA_KEYS = ('decay', 'start_step')


def ema_callback(ema: Mapping[str, Any]) -> EMAWeightAveraging:
    """Lightning's EMA weight averaging for ``model.ema`` (``{decay, start_step}``): validation and every checkpoint
    see the averaged weights, a resumed run goes on from the raw ones."""
    unknown = set(ema) - set(EMA_KEYS)
    if unknown:
        raise ValueError(f'model.ema has unknown keys {sorted(unknown)}; valid: {list(EMA_KEYS)}')
    decay = float(ema.get('decay', 0.999))
    if not 0.0 < decay < 1.0:
        raise ValueError(f'model.ema.decay must lie between 0 and 1 (e.g. 0.999), got {decay}')
    start = int(ema.get('start_step', 0))
    if start < 0:
        raise ValueError(f'model.ema.start_step must be >= 0, got {start}')
    return EMAWeightAveraging(decay=decay, update_starting_at_step=start)


def scaled_lr(base_lr: float, batch_size: int, devices: int = 1, accumulate: int = 1) -> float:
    """The LR scaling rule: ``lr * sqrt(devices) * batch_size / 256 * accumulate``."""
    return base_lr * math.sqrt(devices) * batch_size / 256.0 * accumulate


class BaseSystem(pl.LightningModule):
    """Shared training / evaluation machinery. Subclasses set :attr:`tokenizer_class`, build ``self.model`` and
    implement :meth:`training_loss`.

    Args:
        name: the model configuration's name (e.g. ``parseq-tiny``), kept in checkpoints.
        charset_train: charset spec the model is trained on (fixes the output classes).
        charset_test: charset spec used to filter predictions and labels for evaluation.
        max_label_length: longest label the model decodes.
        img_size: (height, width) of the model input.
        batch_size: per-device batch size (used by the LR scaling rule).
        lr: base learning rate before scaling.
        optimizer: ``{name: adamw|adam|adadelta|sgd, ...optimizer kwargs}``.
        scheduler: ``{name: onecycle|cosine_warm_restarts|cosine|constant, ...}``.
        scale_lr: apply the LR scaling rule (off for optimisers like Adadelta whose lr is not a step size).
        swa: ``{swa_lrs: ..., swa_epoch_start: ...}`` to enable stochastic weight averaging, or None.
        ema: ``{decay: 0.999, start_step: 0}`` to validate, checkpoint and ship an exponential moving average of the
            weights (updated every step from ``start_step``; training goes on from the raw weights), or None.
        preprocess: image preprocessing preset the model expects (see :class:`strhub.data.preprocess.Preprocess`).
    """

    tokenizer_class: type[Tokenizer] = CharTokenizer
    # What a system may offer beyond predict(), declared here with their defaults:
    # several prediction heads (predict_heads() -> {head: prediction}; final_head names what predict() returns) ...
    final_head: str | None = None
    # ... attention maps over the image (attention_maps()) ...
    offers_attention_maps: bool = False
    # ... and export (export.py refuses with this reason when False).
    exportable: bool = True
    export_unsupported_reason: str = ''
    #: Whether some trainable parameters get no gradient in some training steps. DDP must then search for them
    #: after every backward pass (``find_unused_parameters``, slower), which the ``ddp`` trainer turns on only
    #: for systems that set this.
    ddp_find_unused_parameters: bool = False

    def __init__(
        self,
        name: str,
        charset_train: str,
        charset_test: str,
        max_label_length: int,
        img_size: Sequence[int],
        batch_size: int,
        lr: float,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        scale_lr: bool = True,
        swa: Mapping[str, Any] | None = None,
        preprocess: Mapping[str, Any] | None = None,
        ema: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.charset_train = resolve_charset(charset_train)
        self.charset_test = resolve_charset(charset_test)
        # LightningModule's metaclass is not ABCMeta, so abstract methods are checked here, at construction.
        missing = [
            n for n in ('training_loss', 'forward_logits_loss') if getattr(type(self), n) is getattr(BaseSystem, n)
        ]
        if missing:
            raise TypeError(f'{type(self).__name__} must implement {missing} (see BaseSystem)')
        if ema:
            ema_callback(ema)  # a wrong ema section fails here, before any data is set up
        self.tokenizer = self.build_tokenizer()
        self.max_label_length = positive_number('model.max_label_length', max_label_length)
        self.batch_size = positive_number('model.batch_size', batch_size)
        self.lr = positive_number('model.lr', lr, float)
        self.val_metrics = RecognitionMetrics(['val'], TextNormalizer.from_options(charset_test=self.charset_test))
        # Sums of loss x elements and of elements, added up over DDP ranks at compute(): the exact mean over all
        # samples. (Lightning's own sync_dist mean divides the summed integer counts by the world size in integer
        # arithmetic on gloo, which biases it whenever the total is odd.) A NaN loss stays NaN so that divergence
        # shows; nan_strategy='disable' would do that too but also drops the weights (torchmetrics 1.9).
        self.val_loss_mean = MeanMetric(nan_strategy=math.nan)
        self.model: nn.Module

    def build_model(self, model_class: type[nn.Module], arch: Mapping[str, Any], **fixed: Any) -> nn.Module:
        """``model_class(**fixed, **arch)``: the network from the config's ``model.arch`` section plus what the
        system fixes itself (class counts and special ids from its tokenizer, the image size ...). An ``arch`` key
        the constructor does not take, or one the system fixes, is a ValueError naming it and the valid keys."""
        arch = dict(arch)
        fixed_here = sorted(set(arch) & set(fixed))
        if fixed_here:
            raise ValueError(
                f'model.arch.{fixed_here[0]} is set from the model config / tokenizer by {type(self).__name__} '
                f'(as are {sorted(fixed)}); remove it from model.arch'
            )
        check_kwargs(model_class, arch, 'model.arch', set_elsewhere=fixed)
        return model_class(**fixed, **arch)

    def build_tokenizer(self) -> Tokenizer:
        """The system's tokenizer, built once, at construction: :attr:`tokenizer_class` over the training charset.
        Systems whose vocabulary comes from files (TrOCR, GOT-OCR2) override this; their constructor arguments are
        in ``self.hparams`` by then."""
        return self.tokenizer_class(self.charset_train)

    # -- inference ----------------------------------------------------------------------------------------------

    def forward(self, images: Tensor, max_length: int | None = None) -> Tensor:
        """(N, C, H, W) images -> (N, L, num_classes) logits."""
        return self.model(images, max_length)

    @property
    def preprocessing(self) -> Preprocess:
        """The preprocessing this system was trained with (image size, resize mode, normalisation): what the data
        module, the scripts, export and the runtime reader apply to its input images."""
        return Preprocess(img_size=list(self.hparams.img_size), **dict(self.hparams.preprocess or {}))

    def read_prompted(
        self,
        image: Image.Image,
        box: Sequence[float] | None = None,
        color: str | None = None,
        formatted: bool = False,
        crops: int = 1,
    ) -> tuple[str, float]:
        """``(text, confidence)`` of one image read with prompts: a pixel ``box`` or a ``color`` marking the region,
        ``formatted`` output, tiling into up to ``crops`` crops. Only systems whose model takes prompts (GOT-OCR2)
        override this."""
        raise ValueError(
            f'{type(self.model).__name__} takes no region, colour, format or crop prompts (--box, --color, --format, '
            '--crops are GOT-OCR2 options); read without them'
        )

    @torch.inference_mode()
    def predict(self, images: Tensor) -> tuple[list[str], list[Tensor]]:
        """Images -> decoded strings and per-token probabilities (see :meth:`Tokenizer.decode`)."""
        return self.tokenizer.decode(self.forward(images).softmax(-1))

    def predict_heads(self, images: Tensor) -> dict[str, tuple[list[str], list[Tensor]]]:
        """Systems with several prediction heads (``final_head`` set): head -> :meth:`predict`-style output."""
        raise NotImplementedError(f'{type(self).__name__} has one prediction head; use predict()')

    def attention_maps(self, images: Tensor) -> dict[str, tuple[list[list[str]], Tensor]]:
        """Systems that read through spatial attention slots (``offers_attention_maps``): head -> (tokens per image,
        (N, slots, h, w) maps)."""
        raise ValueError(
            f'{type(self).__name__} has no attention maps; they come from models that read through spatial attention '
            'slots (MGP-STR)'
        )

    # -- losses -------------------------------------------------------------------------------------------------

    @abstractmethod
    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        """The training objective for one batch."""

    @abstractmethod
    def forward_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        """The validation path: ``(logits, mean loss, number of loss elements)``."""

    # -- Lightning hooks ----------------------------------------------------------------------------------------

    def training_step(self, batch: tuple, batch_idx: int) -> Tensor:
        images, labels = batch[0], batch[1]
        loss = self.training_loss(images, labels)
        self.log('loss', loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        logits, loss, numel = self.forward_logits_loss(images, labels)
        preds, probs = self.tokenizer.decode(logits.softmax(-1))
        self.val_metrics.update('val', preds, labels, [float(p.prod()) for p in probs])
        self.log_val_loss(loss, numel)

    def log_val_loss(self, loss: Tensor, numel: int) -> None:
        """Adds one validation batch's mean loss over ``numel`` elements to ``val_loss``, the mean over all elements
        of all batches on all ranks (systems that override :meth:`validation_step` call this too)."""
        self.val_loss_mean.update(loss.detach(), weight=numel)
        self.log('val_loss', self.val_loss_mean)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()['val']
        self.val_metrics.reset()
        self.log('val_accuracy', result['accuracy'], prog_bar=True, sync_dist=False)
        self.log('val_NED', result['one_minus_ned'], prog_bar=True, sync_dist=False)
        self.log('hp_metric', result['accuracy'], sync_dist=False)

    def effective_lr(self, lr: float) -> float:
        """``lr`` after the scaling rule (:func:`scaled_lr`) for this run's devices, batch size and gradient
        accumulation; ``lr`` unchanged when ``scale_lr`` is off."""
        if not self.hparams.scale_lr:
            return lr
        trainer = self.trainer
        return scaled_lr(lr, self.batch_size, trainer.num_devices * trainer.num_nodes, trainer.accumulate_grad_batches)

    def configure_optimizers(self):
        opt_cfg = dict(self.hparams.optimizer or {'name': 'adamw'})
        opt_name = opt_cfg.pop('name', 'adamw')
        if opt_name not in OPTIMIZERS:
            raise ValueError(f'unknown optimizer {opt_name!r}; valid: {sorted(OPTIMIZERS)}')
        lr = self.effective_lr(self.lr)
        weight_decay = opt_cfg.pop('weight_decay', 0.0)
        optimizer = OPTIMIZERS[opt_name](self.param_groups(weight_decay), lr=lr, **opt_cfg)
        scheduler = self._build_scheduler(optimizer, lr)
        if scheduler is None:
            return optimizer
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on weight matrices only: biases, norms, embeddings and positional parameters are exempt."""
        no_decay = set()
        exempt = getattr(self.model, 'no_weight_decay', lambda: set())()
        for name, param in self.model.named_parameters():
            if param.ndim <= 1 or name in exempt or name.split('.')[-1] in exempt:
                no_decay.add(name)
        params = dict(self.model.named_parameters())
        groups = [
            {
                'params': [p for n, p in params.items() if n not in no_decay and p.requires_grad],
                'weight_decay': weight_decay,
            },
            {'params': [p for n, p in params.items() if n in no_decay and p.requires_grad], 'weight_decay': 0.0},
        ]
        return [g for g in groups if g['params']]

    def _build_scheduler(self, optimizer: torch.optim.Optimizer, lr: float):
        cfg = dict(self.hparams.scheduler or {'name': 'onecycle'})
        name = cfg.pop('name', 'onecycle')
        total = self.trainer.estimated_stepping_batches
        if name == 'onecycle' and cfg.get('time_budget_s'):
            shape = TimeBudgetOneCycle(int(total), float(cfg['time_budget_s']), cfg.get('warmup_pct', 0.075))
            return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
        if name == 'onecycle':
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g.get('lr', lr) for g in optimizer.param_groups],
                total_steps=int(total),
                pct_start=cfg.get('warmup_pct', 0.075),
                cycle_momentum=cfg.get('cycle_momentum', False),
            )
        if name == 'cosine_warm_restarts':
            return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer,
                T_0=int(cfg.get('restart_steps', max(1, total // 4))),
                T_mult=int(cfg.get('t_mult', 1)),
                eta_min=cfg.get('min_lr', 0.0),
            )
        if name == 'cosine':
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=int(total), eta_min=cfg.get('min_lr', 0.0)
            )
        if name == 'constant':
            return None
        raise ValueError(f'unknown scheduler {name!r}; valid: {list(SCHEDULERS)}')

    @classmethod
    def import_foreign_state(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Maps a state dict of another implementation's layout (Hugging Face, an original release) to this system's
        keys, for ``pretrained=<file>``: the layout registered by this system's model package whose detector
        recognises the keys (:func:`strhub.models.registry.register_layout`; a subclass's package inherits its
        base's layouts); other state dicts pass unchanged."""
        packages = {registry.package_of(c.__module__) for c in cls.__mro__} - {''}
        layout = registry.detect_layout(state, packages=packages)
        if layout is None:
            return dict(state)
        log.info('importing a checkpoint of the %s layout', layout)
        return registry.importer(layout)(state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SYSTEM_KEY] = registry.system_name(type(self))

    def configure_callbacks(self):
        callbacks = []
        if self.hparams.swa:
            callbacks.append(StochasticWeightAveraging(**dict(self.hparams.swa)))
        if self.hparams.get('ema'):
            callbacks.append(ema_callback(self.hparams.ema))
        return callbacks


class CrossEntropySystem(BaseSystem):
    """Models trained with per-position cross-entropy over ``[E] + charset`` (attention decoders)."""

    tokenizer_class = CharTokenizer

    def forward_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        targets = self.tokenizer.encode(labels, self.device)[:, 1:]  # drop [B]
        max_length = targets.shape[1] - 1  # without [E]
        logits = self.forward(images, max_length)
        loss = F.cross_entropy(logits.flatten(end_dim=1), targets.flatten(), ignore_index=self.tokenizer.pad_id)
        return logits, loss, int((targets != self.tokenizer.pad_id).sum())


class CTCSystem(BaseSystem):
    """Models trained with CTC over ``blank + charset``."""

    tokenizer_class = CTCTokenizer

    def forward_logits_loss(self, images: Tensor, labels: list[str]) -> tuple[Tensor, Tensor, int]:
        logits = self.forward(images)
        return logits, self.ctc_loss(logits, labels), len(labels)

    def training_loss(self, images: Tensor, labels: list[str]) -> Tensor:
        return self.ctc_loss(self.forward(images), labels)

    def ctc_loss(self, logits: Tensor, labels: list[str]) -> Tensor:
        targets = self.tokenizer.encode(labels, self.device)
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, N, C)
        frames, n = log_probs.shape[:2]
        input_lengths = torch.full((n,), frames, dtype=torch.long, device=self.device)
        target_lengths = torch.as_tensor([len(y) for y in labels], dtype=torch.long, device=self.device)
        return F.ctc_loss(
            log_probs, targets, input_lengths, target_lengths, blank=self.tokenizer.blank_id, zero_infinity=True
        )
