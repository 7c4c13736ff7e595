"""fairseq_kd: knowledge distillation for text generation, as a fairseq plugin.

Registration only. ``fairseq-* --user-dir fairseq_kd`` imports this package and
then ``tasks/`` and ``models/``; criterions are imported here explicitly
because ``--user-dir`` does not import them.
"""
__version__ = "0.1.0"

from . import checkpoint  # noqa: E402

# torch >= 2.6 loads with weights_only=True: allow exactly the types fairseq
# checkpoints hold (see checkpoint.py) before any checkpoint is read.
checkpoint.allow_fairseq_checkpoints()

from . import criterions, models, tasks  # noqa: E402,F401
