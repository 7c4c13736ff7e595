"""Mask-Predict student presets: ``--arch cmlm_kd_iwslt_de_en`` and ``--arch cmlm_kd_wmt_en_de``.

Ghazvininejad, Levy, Liu, Zettlemoyer (2019), Mask-Predict: Parallel Decoding
of Conditional Masked Language Models. Architectures registered on fairseq's
own ``cmlm_transformer``, so that the recipes name one ``--arch`` per data-set
size instead of a dozen flags; sizes and the shared NAT defaults are in
``_nat_presets`` (the WMT preset is the paper's Transformer-base, the IWSLT one
fairseq's ``transformer_iwslt_de_en`` sizes).

The names are checked free in fairseq's registries (fairseq has
``cmlm_transformer`` and ``cmlm_transformer_wmt_en_de``). Students train with
the stock ``--task translation_lev --noise random_mask``, or with ``--task
translation_lev_kd`` and ``--criterion nat_word_kd`` for word-level KD from an
autoregressive teacher; ``fairseq-generate --task translation_lev
--iter-decode-max-iter 9`` decodes with Mask-Predict's T = 10 iterations.
"""
from fairseq.models import register_model_architecture
from fairseq.models.nat.cmlm_transformer import cmlm_base_architecture

from ._nat_presets import iwslt_sizes, nat_common, wmt_sizes


@register_model_architecture("cmlm_transformer", "cmlm_kd_iwslt_de_en")
def cmlm_kd_iwslt_de_en(args):
    nat_common(args)
    iwslt_sizes(args)
    cmlm_base_architecture(args)


@register_model_architecture("cmlm_transformer", "cmlm_kd_wmt_en_de")
def cmlm_kd_wmt_en_de(args):
    nat_common(args)
    wmt_sizes(args)
    cmlm_base_architecture(args)
