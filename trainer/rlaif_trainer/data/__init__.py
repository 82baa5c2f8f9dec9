"""Data: JSONL records, atomic stage artifacts, and the prompt files with the one train / held-out split."""
