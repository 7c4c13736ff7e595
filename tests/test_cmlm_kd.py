"""Mask-Predict student presets (fairseq_kd/models/cmlm_kd.py): registration, preset
values, and a CMLM student trained on a distilled corpus with the stock
``--task translation_lev`` and decoded with mask-predict."""
import argparse
import math

import pytest
import utils

PRESETS = {
    "cmlm_kd_iwslt_de_en": ("cmlm_transformer", 1024, 4),
    "cmlm_kd_wmt_en_de": ("cmlm_transformer", 2048, 8),
}


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_preset_is_registered_on_fairseqs_model_with_its_sizes(arch):
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    model_name, ffn, heads = PRESETS[arch]
    assert ARCH_MODEL_REGISTRY[arch] is MODEL_REGISTRY[model_name]
    assert ARCH_CONFIG_REGISTRY[arch].__module__ == "fairseq_kd.models.cmlm_kd"
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    assert (args.encoder_layers, args.decoder_layers) == (6, 6)
    assert (args.encoder_embed_dim, args.decoder_embed_dim) == (512, 512)
    assert (args.encoder_ffn_embed_dim, args.decoder_ffn_embed_dim) == (ffn, ffn)
    assert (args.encoder_attention_heads, args.decoder_attention_heads) == (heads, heads)
    assert args.share_all_embeddings and args.apply_bert_init
    assert args.encoder_learned_pos and args.decoder_learned_pos
    assert args.dropout == 0.3


def test_fairseqs_own_architectures_are_untouched():
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY

    for name in ("cmlm_transformer", "cmlm_transformer_wmt_en_de"):
        assert ARCH_CONFIG_REGISTRY[name].__module__.startswith("fairseq.models.nat")


def test_cmlm_student_trains_on_distilled_corpus_and_mask_predict_decodes(nat_data, tmp_path):
    arch = "cmlm_kd_iwslt_de_en"
    save = str(tmp_path / arch)
    proc = utils.train(
        nat_data["distilled"], save, max_update=30,
        arch=["--arch", arch, *utils.TINY_NAT_SIZES],
        criterion=["--criterion", "nat_loss", "--label-smoothing", "0.1"],
        extra=["--task", "translation_lev", "--noise", "random_mask"],
    )
    logs = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "word_ins" in r]
    assert logs, "no word_ins term logged"
    first, last = float(logs[0]["word_ins"]), float(logs[-1]["word_ins"])
    assert math.isfinite(last) and last < first
    hyps = utils.generate(
        nat_data["distilled"], f"{save}/checkpoint_last.pt",
        extra=["--task", "translation_lev", "--iter-decode-max-iter", "4", "--iter-decode-with-beam", "2"],
    )
    assert len(hyps) == 20  # one hypothesis per test sentence (make_copy_task's n_test)
