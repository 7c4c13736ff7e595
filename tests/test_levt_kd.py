"""Levenshtein Transformer student presets (fairseq_kd/models/levt_kd.py): registration,
preset values, and a LevT student trained on a distilled corpus with the stock
``--task translation_lev`` and decoded with iterative refinement."""
import argparse

import pytest
import utils

PRESETS = {
    "levt_kd_iwslt_de_en": ("levenshtein_transformer", 1024, 4),
    "levt_kd_wmt_en_de": ("levenshtein_transformer", 2048, 8),
}


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_preset_is_registered_on_fairseqs_model_with_its_sizes(arch):
    args = utils.check_nat_preset(arch, *PRESETS[arch], module="fairseq_kd.models.levt_kd")
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
    utils.train_and_decode_nat(nat_data["distilled"], str(tmp_path / arch), arch, "random_delete", length_beam=1)
