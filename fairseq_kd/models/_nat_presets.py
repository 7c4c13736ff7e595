"""What the NAT student presets share (``cmlm_kd.py``, ``levt_kd.py``); registers nothing.

All presets use what fairseq's NAT README trains with: learned positions,
BERT-style initialization, one embedding matrix shared by encoder, decoder and
output (the data must be binarized with ``--joined-dictionary``) and dropout
0.3. The WMT sizes are the Transformer-base of both papers (6+6 layers, 512
wide, 2048 FFN, 8 heads); the IWSLT sizes are fairseq's
``transformer_iwslt_de_en`` (512 wide, 1024 FFN, 4 heads). Every value is a
default: a command-line flag overrides it (the tests shrink the models this way).
"""


def nat_common(args):
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


def iwslt_sizes(args):
    _sizes(args, 512, 1024, 4, 6)  # fairseq's transformer_iwslt_de_en


def wmt_sizes(args):
    _sizes(args, 512, 2048, 8, 6)  # Transformer-base (Vaswani et al. 2017), as in both papers' WMT'14 models
