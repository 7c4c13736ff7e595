"""Mask-Predict student presets (fairseq_kd/models/cmlm_kd.py): registration, preset
values, and a CMLM student trained on a distilled corpus with the stock
``--task translation_lev`` and decoded with mask-predict."""

import pytest
import utils

PRESETS = {
    "cmlm_kd_iwslt_de_en": ("cmlm_transformer", 1024, 4),
    "cmlm_kd_wmt_en_de": ("cmlm_transformer", 2048, 8),
}


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_preset_is_registered_on_fairseqs_model_with_its_sizes(arch):
    args = utils.check_nat_preset(arch, *PRESETS[arch], module="fairseq_kd.models.cmlm_kd")


def test_fairseqs_own_architectures_are_untouched():
    import fairseq_kd  # noqa: F401
    from fairseq.models import ARCH_CONFIG_REGISTRY

    for name in ("cmlm_transformer", "cmlm_transformer_wmt_en_de"):
        assert ARCH_CONFIG_REGISTRY[name].__module__.startswith("fairseq.models.nat")


def test_cmlm_student_trains_on_distilled_corpus_and_mask_predict_decodes(nat_data, tmp_path):
    arch = "cmlm_kd_iwslt_de_en"
    utils.train_and_decode_nat(nat_data["distilled"], str(tmp_path / arch), arch, "random_mask", length_beam=2)
