"""Modeling: loading and LoRA, the embedded default model (fetch and convert), and generation."""
