"""The reward model: pair losses, batching, training, and the scorer that RL uses."""
