"""Stage 7, prune: pruning plans and structured pruning that lands on exact widths."""
