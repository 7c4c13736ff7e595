"""fairseq_kd: knowledge distillation for text generation, as a fairseq plugin.

Registration only. ``fairseq-* --user-dir fairseq_kd`` imports this package and
then ``tasks/`` and ``models/``; criterions are imported here explicitly
because ``--user-dir`` does not import them. Two fixes to fairseq itself are
applied here, before fairseq reads a checkpoint or batches a split: safe
checkpoint loading (checkpoint.py) and keeping the last batch of every split
(batching.py). And the plugin's refusals inside fairseq's commands end on one
line with exit status 2 (errors.py).
"""
__version__ = "0.1.0"

from . import batching, checkpoint, errors  # noqa: E402

# torch >= 2.6 loads with weights_only=True: allow exactly the types fairseq
# checkpoints hold (see checkpoint.py) before any checkpoint is read.
checkpoint.allow_fairseq_checkpoints()
# fairseq drops the last batch of a split unless its size is a multiple of
# --required-batch-size-multiple (fairseq issue #5036): keep it (see batching.py).
batching.install()
# A refusal of the user's options inside fairseq's own commands (fairseq-train ...) ends on
# one line with exit 2, as the plugin's commands do, not with a traceback (see errors.py).
errors.install_excepthook()

from . import criterions, models, tasks  # noqa: E402,F401
