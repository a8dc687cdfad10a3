"""Stage 3, teachers: fitted once per split and teacher set, ensemble logits cached."""

#: The teacher set every command distils from unless told otherwise (``run``, ``train --kd``,
#: ``prune``, ``teachers fit``), and how many epochs it trains at the search's batch for the
#: split. One ``wide_cp_mobile`` stopped at 20 epochs has not memorised the split (98.6 %
#: agreement with the training labels at 5 %) and added 2.4 ± 1.6 points to its students over six
#: seeds; the two-architecture pair at the student's 150 epochs memorised it (100 %) and added
#: nothing or cost points (``benchmarks/kd_gain.py``).
DEFAULT_TEACHERS: tuple[str, ...] = ("wide_cp_mobile",)
DEFAULT_TEACHER_EPOCHS = 20
#: Device impulse-response augmentation for the teachers (the probability that a device-a clip
#: gets another device's colouring; ``training/device_responses.py``). With it the default teacher
#: scores 62.7 % on validation at split 5 instead of 53.3 and agrees with only 88 % of the
#: training labels, for 2.7 CPU-min of fitting instead of 2.2; its students gained 2.5 points on
#: validation (95 % t +0.5 to +4.5) and 1.0 on test (−0.2 to +2.3) over the teacher without it,
#: and 3.4 on test over no teachers (+2.5 to +4.4), six seeds (``benchmarks/kd_gain.py``).
DEFAULT_TEACHER_DEVICE_RESPONSE_P = 0.6
