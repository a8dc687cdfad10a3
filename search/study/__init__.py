"""Stage 9, search: spaces, trials, studies and their storage, budgets, promotion."""
