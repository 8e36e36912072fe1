"""Tiny diffusers model folders, as the trainer publishes them, and ways to break one (for the weights check)."""

from pathlib import Path

from safetensors.torch import load_file, save_file

from cosmicman.model.components import build_tiny_components

UNET_WEIGHTS = Path("unet", "diffusion_pytorch_model.safetensors")


def write_tiny_model(folder: Path) -> Path:
    """A randomly initialised tiny SD pipeline saved in diffusers format at ``folder``."""
    build_tiny_components(seed=0).pipeline().save_pretrained(str(folder))
    return folder


def train_tiny_model(folder: Path, family: str, shards: list[str]) -> Path:
    """A tiny model of ``family`` trained for two steps by the real trainer and published at ``folder``."""
    from cosmicman.model.train.config import TrainConfig
    from cosmicman.model.train.loop import train

    config = {
        "shards": shards,
        "output_url": str(folder),
        "family": family,
        "resolution": 64,
        "batch_size": 2,
        "steps": 2,
        "lr": 1e-3,
        "hola_map_factor": 8,
        "seed": 0,
        "shuffle_buffer": 4,
        "ema_decay": 0.0,
    }
    train(TrainConfig.from_dict(config), log_fn=lambda message: None)
    return folder


def poison_unet(folder: Path, value: float = float("nan"), tensors: int = 1) -> list[str]:
    """Set one value of each of the first ``tensors`` floating UNet weights to ``value``; their names."""
    path = folder / UNET_WEIGHTS
    weights = load_file(str(path))
    names = [n for n, t in sorted(weights.items()) if t.is_floating_point()][:tensors]
    for name in names:
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = value
    save_file(weights, str(path))
    return names


def truncate_unet(folder: Path) -> None:
    """Cut the UNet's weight file in half: the folder no longer loads."""
    path = folder / UNET_WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
