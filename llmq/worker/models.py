"""Model names to files: registered variants first, then built-in names and paths. No torch."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from llmq.db.models import ModelVariant
from llmq.db.session import session_scope
from llmq.worker.engine.files import resolve_model_path
from llmq.worker.engine.tokenizer import TextTokenizer, load_tokenizer


def resolve_model(name: str) -> str:
    """A registered variant's artifact path, or ``name`` itself (a built-in name or a path)."""
    try:
        with session_scope() as session:
            path = session.execute(select(ModelVariant.artifact_path)
                                   .where(ModelVariant.name == name)).scalar_one_or_none()
    except SQLAlchemyError:  # no registry table yet: built-in names and paths still work
        path = None
    return path or name


@lru_cache(maxsize=4)
def tokenizer_for(name: str) -> TextTokenizer:
    return load_tokenizer(resolve_model_path(resolve_model(name)))
