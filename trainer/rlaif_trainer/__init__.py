"""rlaif_trainer: the RLAIF stages (label, reward, rl, evaluate) and a local pipeline runner."""

__version__ = "0.1.0"
