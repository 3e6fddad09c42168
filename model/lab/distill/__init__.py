"""`avs distill`: a student trained on a teacher's soft masks over unlabelled videos.

    teacher.py        the teacher as a callable with a fingerprint (a checkpoint's tensors, hashed)
    teacher_cache.py  the teacher runs once per video: its logits cached on disk beside a manifest
    dataset.py        the cached frames, their sound and the teacher's logits as training items
    loss.py           the distillation loss (Hinton et al. 2015 soft targets + V-Net Dice on the teacher's masks)
    training.py       `avs train`'s trainer with the distillation loss and agreement as the validation metric
    report.py         agreement with the teacher, ground truth, silence/shuffle checks, frames/s of both

The frames and sound come from `worker.distill_inputs` (serving's decode and alignment), injected by the CLI
(imports point app -> worker -> model).
"""
