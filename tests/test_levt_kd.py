"""Levenshtein Transformer student presets (fairseq_kd/models/levt_kd.py): registration,
preset values, and a LevT student trained on a distilled corpus with the stock
``--task translation_lev`` and decoded with iterative refinement."""
import argparse
import math

import pytest
import utils

PRESETS = {
    "levt_kd_iwslt_de_en": ("levenshtein_transformer", 1024, 4),
    "levt_kd_wmt_en_de": ("levenshtein_transformer", 2048, 8),
}


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_preset_is_registered_on_fairseqs_model_with_its_sizes(arch):
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    model_name, ffn, heads = PRESETS[arch]
    assert ARCH_MODEL_REGISTRY[arch] is MODEL_REGISTRY[model_name]
    assert ARCH_CONFIG_REGISTRY[arch].__module__ == "fairseq_kd.models.levt_kd"
    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    assert (args.encoder_layers, args.decoder_layers) == (6, 6)
    assert (args.encoder_embed_dim, args.decoder_embed_dim) == (512, 512)
    assert (args.encoder_ffn_embed_dim, args.decoder_ffn_embed_dim) == (ffn, ffn)
    assert (args.encoder_attention_heads, args.decoder_attention_heads) == (heads, heads)
    assert args.share_all_embeddings and args.apply_bert_init
    assert args.encoder_learned_pos and args.decoder_learned_pos
    assert args.dropout == 0.3
    assert args.early_exit == "6,6,6"


def test_command_line_values_override_the_preset():
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(decoder_layers=2, encoder_embed_dim=64, dropout=0.1)
    ARCH_CONFIG_REGISTRY["levt_kd_iwslt_de_en"](args)
    assert (args.decoder_layers, args.encoder_embed_dim, args.dropout) == (2, 64, 0.1)
    assert args.decoder_embed_dim == 512  # only what was given changes
    assert args.early_exit == "2,2,2"  # follows the shrunk decoder


def test_fairseqs_own_architectures_are_untouched():
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY

    assert ARCH_CONFIG_REGISTRY["levenshtein_transformer"].__module__.startswith("fairseq.models.nat")


def test_levt_student_trains_on_distilled_corpus_and_decodes(nat_data, tmp_path):
    arch = "levt_kd_iwslt_de_en"
    save = str(tmp_path / arch)
    proc = utils.train(
        nat_data["distilled"], save, max_update=30,
        arch=["--arch", arch, *utils.TINY_NAT_SIZES],
        criterion=["--criterion", "nat_loss", "--label-smoothing", "0.1"],
        extra=["--task", "translation_lev", "--noise", "random_delete"],
    )
    logs = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "word_ins" in r]
    assert logs, "no word_ins term logged"
    first, last = float(logs[0]["word_ins"]), float(logs[-1]["word_ins"])
    assert math.isfinite(last) and last < first
    hyps = utils.generate(
        nat_data["distilled"], f"{save}/checkpoint_last.pt",
        extra=["--task", "translation_lev", "--iter-decode-max-iter", "4", "--iter-decode-with-beam", "1"],
    )
    assert len(hyps) == 20  # one hypothesis per test sentence (make_copy_task's n_test)
