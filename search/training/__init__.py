"""Stages 6 and 8, train and evaluate: recipe, augmentation, KD fit, scoring, checkpoints."""
