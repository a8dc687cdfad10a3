"""Stage 1, dataset: TAU22-layout folders, their checks, clips and data sources."""
