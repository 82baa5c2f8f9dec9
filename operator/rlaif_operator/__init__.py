"""rlaif_operator: a kopf operator that reconciles RLAIFJob resources into stage Jobs."""

__version__ = "0.1.0"
