"""Stage 3, teachers: fitted once per split and teacher set, ensemble logits cached."""

#: The teacher set every command distils from unless told otherwise (``run``, ``train --kd``,
#: ``prune``, ``teachers fit``), and how many epochs it trains at the search's batch for the
#: split. One ``wide_cp_mobile`` stopped at 20 epochs has not memorised the split (98.6 %
#: agreement with the training labels at 5 %) and added 2.4 ± 1.6 points to its students over six
#: seeds; the two-architecture pair at the student's 150 epochs memorised it (100 %) and added
#: nothing or cost points (``benchmarks/kd_gain.py``).
DEFAULT_TEACHERS: tuple[str, ...] = ("wide_cp_mobile",)
DEFAULT_TEACHER_EPOCHS = 20
