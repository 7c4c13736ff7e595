"""The teacher interface of the KD tasks (tasks/_kd_teacher.py): SoftTargets' fields and
shapes on a tiny batch from an online teacher and from soft labels, the all-rows method,
the capability methods, one --teacher-path option, and criterions that refuse a task
without the interface in one line."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd.tasks._kd_teacher import SoftTargets, TeacherConfig, TeacherTask, require_teacher_task

T, K = 2.0, 4


def _kd_task(data, *extra):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--criterion", "word_kd",
        "--label-smoothing", "0.1", "--cpu", *extra,
    ])


def test_soft_targets_is_one_named_tuple():
    assert SoftTargets._fields == ("probs_T", "ids_T", "teacher_nll")
    probs, ids, nll = SoftTargets(torch.ones(2, 3) / 3, None, None)  # unpacks as the old tuple
    assert probs.shape == (2, 3) and ids is None and nll is None


def test_both_kd_tasks_share_the_teacher_option_and_interface():
    from fairseq_kd.tasks.translation_kd import TranslationKDConfig, TranslationKDTask
    from fairseq_kd.tasks.translation_lev_kd import TranslationLevKDConfig, TranslationLevKDTask

    for config, task in ((TranslationKDConfig, TranslationKDTask), (TranslationLevKDConfig, TranslationLevKDTask)):
        assert issubclass(config, TeacherConfig) and issubclass(task, TeacherTask)
        names = [f.name for f in dataclasses.fields(config)]
        assert names.count("teacher_path") == 1
        assert names.index("teacher_path") > names.index("data")  # after the fairseq task's own options
        assert task.setup_task.__func__ is TeacherTask.setup_task.__func__  # one place sets the teacher up


def test_online_teacher_soft_targets_fields_and_shapes(tiny_data, tiny_teacher):
    _, task, model, _ = _kd_task(tiny_data, "--teacher-path", tiny_teacher)
    sample = utils.first_batch(task)
    target = sample["target"]
    B, L = target.shape
    V = len(task.target_dictionary)
    mask = target.ne(task.target_dictionary.pad())
    N = int(mask.sum())
    assert task.has_teacher(sample) and not task.teacher_is_topk() and not task.has_distilled_targets()
    model.eval()
    with torch.no_grad():
        z_T = task.teacher.models[0](**sample["net_input"])[0]  # B x T x V
        full = task.teacher_soft_targets(sample, model, mask, temperature=T)
        top = task.teacher_soft_targets(sample, model, mask, T, K)
        rows = task.teacher_soft_targets_all_rows(sample, model, temperature=T)
    nll = -F.log_softmax(z_T[mask], -1).gather(-1, target[mask].unsqueeze(-1)).sum()  # temperature 1

    assert isinstance(full, SoftTargets) and full.ids_T is None
    assert full.probs_T.shape == (N, V) and full.probs_T.dtype == torch.float32
    utils.assert_close_by_norm(full.probs_T, F.softmax(z_T[mask] / T, -1), rtol=1e-5, what="q")
    assert full.teacher_nll.dim() == 0 and full.teacher_nll.item() == pytest.approx(nll.item(), rel=1e-5)

    assert top.probs_T.shape == top.ids_T.shape == (N, K)
    assert torch.equal(top.ids_T, z_T[mask].topk(K, -1).indices)
    assert torch.allclose(top.probs_T.sum(-1), torch.ones(N))
    assert top.teacher_nll.item() == pytest.approx(nll.item(), rel=1e-5)  # full vocabulary, T = 1, any K

    # all rows: B*T of them, pads included, the masked ones equal to the gathered rows
    assert rows.ids_T is None and rows.probs_T.shape == (B * L, V)
    assert torch.isfinite(rows.probs_T).all()
    utils.assert_close_by_norm(rows.probs_T[mask.reshape(-1)], full.probs_T, rtol=1e-6, what="all rows")
    assert rows.teacher_nll.item() == pytest.approx(nll.item(), rel=1e-5)  # summed over the non-pad rows


def test_soft_label_rows_fields_and_shapes(tiny_data):
    """A batch's soft labels (what a store collates: B x T x K ids and logits, pad rows zero)."""
    _, task, model, _ = _kd_task(tiny_data)
    sample = utils.first_batch(task)
    assert not task.has_teacher(sample)
    target = sample["target"]
    B, L = target.shape
    mask = target.ne(task.target_dictionary.pad())
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(task.target_dictionary), (B, L, K), generator=generator)
    logits = torch.randn(B, L, K, generator=generator).sort(-1, descending=True).values.half()
    ids[~mask], logits[~mask] = task.target_dictionary.pad(), 0
    sample["soft_labels"] = {"ids": ids, "logits": logits}
    assert task.has_teacher(sample)

    got = task.teacher_soft_targets(sample, model, mask, temperature=T, topk=K - 1)
    assert isinstance(got, SoftTargets) and got.teacher_nll is None  # no full distribution stored
    assert torch.equal(got.ids_T, ids[mask][:, : K - 1])
    utils.assert_close_by_norm(got.probs_T, F.softmax(logits[mask][:, : K - 1].float() / T, -1), rtol=1e-6)

    rows = task.teacher_soft_targets_all_rows(sample, model, temperature=T)
    assert rows.probs_T.shape == rows.ids_T.shape == (B * L, K) and rows.teacher_nll is None
    assert torch.isfinite(rows.probs_T).all()
    assert torch.equal(rows.ids_T, ids.reshape(-1, K))
    assert torch.equal(rows.probs_T[mask.reshape(-1)], task.teacher_soft_targets(sample, model, mask, T).probs_T)


def test_a_batch_without_a_teacher_is_refused_not_answered_with_none(tiny_data):
    _, task, model, _ = _kd_task(tiny_data)
    sample = utils.first_batch(task)
    mask = sample["target"].ne(task.target_dictionary.pad())
    assert not task.has_teacher(sample)
    for ask in (lambda: task.teacher_soft_targets(sample, model, mask),
                lambda: task.teacher_soft_targets_all_rows(sample, model)):
        with pytest.raises(RuntimeError, match=r"no teacher distribution .*ask has_teacher\(sample\) first"):
            ask()


def test_a_criterion_refuses_a_task_without_the_interface_in_one_line(tiny_data):
    argv = [tiny_data, *utils.TINY_TRANSFORMER, "--task", "translation", "--label-smoothing", "0.1", "--cpu"]
    with pytest.raises(ValueError) as error:
        utils.build_in_process([*argv, "--criterion", "word_kd"])
    assert str(error.value) == (
        "--criterion word_kd needs --task translation_kd (it provides the teacher), got --task translation"
    )
    with pytest.raises(ValueError, match=r"^--criterion seq_kd needs the teacher's outputs: --task translation_kd "
                                         r"--distilled-data DIR"):
        utils.build_in_process([*argv, "--criterion", "seq_kd"])
    utils.build_in_process([*argv, "--criterion", "seq_kd", "--kd-alpha", "0"])  # the gold term alone: any task


def test_require_teacher_task_checks_the_batch_kind_too():
    from fairseq.data import Dictionary
    from fairseq.tasks.translation_lev import TranslationLevenshteinTask

    from fairseq_kd.tasks.translation_kd import TranslationKDConfig, TranslationKDTask
    from fairseq_kd.tasks.translation_lev_kd import TranslationLevKDConfig, TranslationLevKDTask

    d = Dictionary()
    ar = TranslationKDTask(TranslationKDConfig(), d, d)
    nat = TranslationLevKDTask(TranslationLevKDConfig(), d, d)
    require_teacher_task(ar, "word_kd", "--task translation_kd")
    require_teacher_task(nat, "nat_word_kd", "--task translation_lev_kd", base=TranslationLevenshteinTask)
    with pytest.raises(ValueError, match=r"^--criterion nat_word_kd needs --task translation_lev_kd \(it provides "
                                         r"the teacher\), got --task TranslationKDTask$"):
        require_teacher_task(ar, "nat_word_kd", "--task translation_lev_kd", base=TranslationLevenshteinTask)
    assert nat.teacher is None and not nat.has_teacher({}) and not nat.teacher_is_topk()
    with pytest.raises(NotImplementedError, match="TranslationLevKDTask has no teacher_soft_targets_all_rows"):
        nat.teacher_soft_targets_all_rows({}, None)
