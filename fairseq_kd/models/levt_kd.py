"""Levenshtein Transformer student presets: ``--arch levt_kd_iwslt_de_en`` and ``--arch levt_kd_wmt_en_de``.

Gu, Wang, Zhao (2019), Levenshtein Transformer. Architectures registered on
fairseq's own ``levenshtein_transformer``, so that the recipes name one
``--arch`` per data-set size instead of a dozen flags; sizes and the shared NAT
defaults are in ``_nat_presets`` (the WMT preset is the paper's
Transformer-base, the IWSLT one fairseq's ``transformer_iwslt_de_en`` sizes).
LevT's three decoder heads (deletion, placeholder, insertion) exit at the last
layer (``--early-exit N,N,N``), following ``--decoder-layers`` when shrunk.

The names are checked free in fairseq's registries (fairseq has
``levenshtein_transformer*``). Students train with the stock ``--task
translation_lev --noise random_delete``, or with ``--task translation_lev_kd``
and ``--criterion nat_word_kd`` for word-level KD from an autoregressive teacher.
"""
from fairseq.models import register_model_architecture
from fairseq.models.nat.levenshtein_transformer import levenshtein_base_architecture

from ._nat_presets import iwslt_sizes, nat_common, wmt_sizes


def _early_exit(args):
    # the three heads exit at the last layer unless told otherwise; follows --decoder-layers when shrunk
    n = args.decoder_layers
    args.early_exit = getattr(args, "early_exit", f"{n},{n},{n}")


@register_model_architecture("levenshtein_transformer", "levt_kd_iwslt_de_en")
def levt_kd_iwslt_de_en(args):
    nat_common(args)
    iwslt_sizes(args)
    _early_exit(args)
    levenshtein_base_architecture(args)


@register_model_architecture("levenshtein_transformer", "levt_kd_wmt_en_de")
def levt_kd_wmt_en_de(args):
    nat_common(args)
    wmt_sizes(args)
    _early_exit(args)
    levenshtein_base_architecture(args)
