"""Stage 2, features: cached log-mels, and one split's train/validation/test sets."""
