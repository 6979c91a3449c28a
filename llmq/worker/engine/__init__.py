"""The model and everything that runs it. Pure PyTorch: knows nothing of Celery, SQL or HTTP."""

from .engine import Engine, EngineConfig, GenerationRequest, GenerationResult
from .loader import ModelNotFoundError, load_checkpoint, resolve_model_path
from .sampling import SamplingParams

__all__ = [
    "Engine",
    "EngineConfig",
    "GenerationRequest",
    "GenerationResult",
    "ModelNotFoundError",
    "SamplingParams",
    "load_checkpoint",
    "resolve_model_path",
]
