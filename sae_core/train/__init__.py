"""Training TopK / BatchTopK SAEs on collected activations, in pure torch (CPU, CUDA, torchrun DDP).

    from sae_core.train import ActivationSource, RunFiles, TrainConfig, train_sae
    source = ActivationSource.open("output/sae_datasets/my_dataset")
    result = train_sae(TrainConfig(n_latents=5120, k=10, steps=2000), source,
                       files=RunFiles.beside("models/sae/my_sae.safetensors"))
"""
from .config import TrainConfig
from .run import RunFiles, TrainResult, train_sae
from .stream import ActivationSource, ShuffledStream
from .trainer import SAETrainer, new_sae

__all__ = ["ActivationSource", "RunFiles", "SAETrainer", "ShuffledStream", "TrainConfig", "TrainResult", "new_sae",
           "train_sae"]
