"""The contract tests run real stages on the trainer tests' tiny model."""

from tests.unit.trainer.conftest import tiny_model_dir

__all__ = ["tiny_model_dir"]
