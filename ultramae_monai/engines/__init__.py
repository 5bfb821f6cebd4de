"""ultramae_monai.engines: the pretraining loop and its parts (optimiser, checkpoints, RNG, DDP, previews)."""

from ultramae_monai.engines.checkpoint import CheckpointManager, atomic_save
from ultramae_monai.engines.distributed import (
    all_gather_objects,
    cleanup_distributed,
    distributed_device,
    init_distributed,
    is_distributed,
    is_main_process,
    rank,
    world_size,
)
from ultramae_monai.engines.finetune import (
    default_checkpoint,
    init_encoder,
    intensity_of,
    load_network_weights,
    prepare_data,
    read_settings,
    write_settings,
)
from ultramae_monai.engines.layer_decay import layer_decay_param_groups
from ultramae_monai.engines.optim import WarmupCosine, build_optimizer, build_scheduler, param_groups, scaled_lr
from ultramae_monai.engines.preview import reconstruction_grid, save_grid_png
from ultramae_monai.engines.rng import capture_rng_state, restore_rng_state, seed_everything
from ultramae_monai.engines.trainer import NonFiniteLossError, PretrainTrainer

__all__ = [
    "CheckpointManager",
    "NonFiniteLossError",
    "PretrainTrainer",
    "WarmupCosine",
    "all_gather_objects",
    "atomic_save",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "cleanup_distributed",
    "default_checkpoint",
    "distributed_device",
    "init_distributed",
    "init_encoder",
    "intensity_of",
    "is_distributed",
    "is_main_process",
    "layer_decay_param_groups",
    "load_network_weights",
    "param_groups",
    "prepare_data",
    "rank",
    "read_settings",
    "reconstruction_grid",
    "restore_rng_state",
    "save_grid_png",
    "scaled_lr",
    "seed_everything",
    "world_size",
    "write_settings",
]
