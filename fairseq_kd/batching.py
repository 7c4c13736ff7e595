"""Keep the last batch of every split that fairseq drops (fairseq issue #5036).

fairseq 0.12's ``fairseq.data.data_utils.batch_by_size`` builds batches with
the compiled ``data_utils_fast.batch_by_size_vec`` / ``batch_by_size_fn``,
which split the size-ordered indices into consecutive batches that cover every
index and respect ``max_tokens`` / ``max_sentences``: each batch holds fewer
than ``required_batch_size_multiple`` sentences or a multiple of it, except the
last, which holds whatever is left. The Python wrapper then ends with::

    if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0:
        b = b[:-1]

so whenever a split's remainder is not a multiple of
``--required-batch-size-multiple`` (default 8) its last batch, the longest
sentences, is thrown away: ``fairseq-generate --batch-size 32`` on 60 test
sentences prints 56 hypotheses, a split smaller than 8 sentences yields no
batch at all, and training never sees the longest few sentences of an epoch
(https://github.com/facebookresearch/fairseq/issues/5036). An empty split
raises ``IndexError`` there.

:func:`install` replaces ``data_utils.batch_by_size`` (and every already
imported module's name bound to it) by :func:`batch_by_size`, which calls
fairseq's own function and appends the indices it dropped as one last batch.
The batches fairseq keeps are unchanged; the appended one is the remainder the
compiled batcher built under the same ``max_tokens`` / ``max_sentences``
limits. ``fixed_shapes`` batching drops nothing and is passed through. The
plugin's package ``__init__`` installs it, so every stock ``fairseq-*`` command
run with ``--user-dir fairseq_kd`` keeps every sentence.
"""
import functools
import logging
import sys

import numpy as np
from fairseq.data import data_utils

logger = logging.getLogger(__name__)

_MARK = "_fairseq_kd_keeps_last_batch"
_logged = False


def _log_once(kept: int, bsz_mult: int) -> None:
    global _logged
    if not _logged:
        _logged = True
        logger.info(
            f"fairseq_kd keeps the last batch of each split that fairseq drops when its size is not "
            f"a multiple of --required-batch-size-multiple (fairseq issue #5036): here "
            f"{kept} sentence(s), multiple {bsz_mult}"
        )


def make_batch_by_size(fairseq_batch_by_size):
    """Wrap fairseq's ``batch_by_size`` so that no index is dropped."""

    @functools.wraps(fairseq_batch_by_size)
    def batch_by_size(
        indices,
        num_tokens_fn,
        num_tokens_vec=None,
        max_tokens=None,
        max_sentences=None,
        required_batch_size_multiple=1,
        fixed_shapes=None,
    ):
        if not isinstance(indices, np.ndarray):  # an iterator can be read once only
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        if len(indices) == 0:
            return []
        batches = fairseq_batch_by_size(
            indices,
            num_tokens_fn,
            num_tokens_vec=num_tokens_vec,
            max_tokens=max_tokens,
            max_sentences=max_sentences,
            required_batch_size_multiple=required_batch_size_multiple,
            fixed_shapes=fixed_shapes,
        )
        if fixed_shapes is not None:
            return batches
        kept = sum(len(b) for b in batches)
        if kept < len(indices):
            # fairseq's batches are consecutive slices of `indices` and only the
            # last one is dropped: the remainder is indices[kept:].
            head = np.concatenate(batches) if batches else indices[:0]
            if not np.array_equal(head, indices[:kept]):
                raise RuntimeError(
                    "fairseq's batch_by_size no longer returns consecutive slices of the indices; "
                    "fairseq_kd.batching cannot restore the dropped batch"
                )
            batches = list(batches) + [indices[kept:]]
            _log_once(len(indices) - kept, required_batch_size_multiple)
        return batches

    setattr(batch_by_size, _MARK, True)
    return batch_by_size


def install() -> None:
    """Make ``fairseq.data.data_utils.batch_by_size`` keep every index, for every caller.

    Idempotent. Modules that ran ``from fairseq.data.data_utils import
    batch_by_size`` before the plugin was imported hold the old function under
    their own name: those names are rebound too. Modules imported later read
    the fixed function from ``data_utils``."""
    original = data_utils.batch_by_size
    if getattr(original, _MARK, False):
        return
    fixed = make_batch_by_size(original)
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                namespace[name] = fixed
    data_utils.batch_by_size = fixed
