"""Non-autoregressive student presets: ``--arch cmlm_kd_*`` and ``--arch levt_kd_*``.

Architectures registered on fairseq's own NAT models, so that the recipes name
one ``--arch`` per data-set size instead of a dozen flags:

- ``cmlm_kd_iwslt_de_en``, ``cmlm_kd_wmt_en_de`` on ``cmlm_transformer``
  (Mask-Predict: Ghazvininejad, Levy, Liu, Zettlemoyer 2019, Mask-Predict:
  Parallel Decoding of Conditional Masked Language Models);
- ``levt_kd_iwslt_de_en``, ``levt_kd_wmt_en_de`` on ``levenshtein_transformer``
  (Gu, Wang, Zhao 2019, Levenshtein Transformer).

The WMT presets are the Transformer-base sizes of both papers (6+6 layers, 512
wide, 2048 FFN, 8 heads); the IWSLT presets use fairseq's
``transformer_iwslt_de_en`` sizes (512 wide, 1024 FFN, 4 heads). All presets
use what fairseq's NAT README trains with: learned positions, BERT-style
initialization, one embedding matrix shared by encoder, decoder and output
(the data must be binarized with ``--joined-dictionary``) and dropout 0.3.
Every value is a default: a command-line flag overrides it (the tests shrink
the models this way).

The names are checked free in fairseq's registries (fairseq has
``cmlm_transformer``, ``cmlm_transformer_wmt_en_de`` and
``levenshtein_transformer*``). Students train with the stock
``--task translation_lev`` (``--noise random_mask`` for CMLM,
``random_delete`` for LevT) or with ``--task translation_lev_kd`` and
``--criterion nat_word_kd`` for word-level KD from an autoregressive teacher.
"""
from fairseq.models import register_model_architecture
from fairseq.models.nat.cmlm_transformer import cmlm_base_architecture
from fairseq.models.nat.levenshtein_transformer import levenshtein_base_architecture


def _nat_common(args):
    """What fairseq's NAT README passes on the command line, as defaults."""
    args.encoder_learned_pos = getattr(args, "encoder_learned_pos", True)
    args.decoder_learned_pos = getattr(args, "decoder_learned_pos", True)
    args.apply_bert_init = getattr(args, "apply_bert_init", True)
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)
    args.dropout = getattr(args, "dropout", 0.3)


def _sizes(args, dim, ffn, heads, layers):
    """Encoder and decoder sizes as defaults (command-line values win)."""
    for side in ("encoder", "decoder"):
        for name, value in (("embed_dim", dim), ("ffn_embed_dim", ffn), ("attention_heads", heads), ("layers", layers)):
            setattr(args, f"{side}_{name}", getattr(args, f"{side}_{name}", value))


def _iwslt_sizes(args):
    _sizes(args, 512, 1024, 4, 6)  # fairseq's transformer_iwslt_de_en


def _wmt_sizes(args):
    _sizes(args, 512, 2048, 8, 6)  # Transformer-base (Vaswani et al. 2017), as in both papers' WMT'14 models


def _levt_early_exit(args):
    # LevT's three decoder heads (deletion, placeholder, insertion) exit at the
    # last layer unless told otherwise; follows --decoder-layers when shrunk.
    n = args.decoder_layers
    args.early_exit = getattr(args, "early_exit", f"{n},{n},{n}")


@register_model_architecture("cmlm_transformer", "cmlm_kd_iwslt_de_en")
def cmlm_kd_iwslt_de_en(args):
    _nat_common(args)
    _iwslt_sizes(args)
    cmlm_base_architecture(args)


@register_model_architecture("cmlm_transformer", "cmlm_kd_wmt_en_de")
def cmlm_kd_wmt_en_de(args):
    _nat_common(args)
    _wmt_sizes(args)
    cmlm_base_architecture(args)


@register_model_architecture("levenshtein_transformer", "levt_kd_iwslt_de_en")
def levt_kd_iwslt_de_en(args):
    _nat_common(args)
    _iwslt_sizes(args)
    _levt_early_exit(args)
    levenshtein_base_architecture(args)


@register_model_architecture("levenshtein_transformer", "levt_kd_wmt_en_de")
def levt_kd_wmt_en_de(args):
    _nat_common(args)
    _wmt_sizes(args)
    _levt_early_exit(args)
    levenshtein_base_architecture(args)
