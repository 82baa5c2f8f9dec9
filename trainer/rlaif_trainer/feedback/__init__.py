"""AI feedback: the labelers (protocol, bases, hf, openai and python providers), their prompts, the
d-RLAIF scores, candidate sampling, labelling, win-rate statistics and the compare-labels analysis."""
