"""Stage 3, teachers: fitted once per split and teacher set, ensemble logits cached."""
