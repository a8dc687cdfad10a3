"""Stage 3b, parents: wide networks trained once and shared by every pruning plan."""
