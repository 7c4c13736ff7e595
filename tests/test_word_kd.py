"""--criterion word_kd with an online teacher (--task translation_kd --teacher-path)."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd import losses

KD_ARGS = ["--task", "translation_kd", "--criterion", "word_kd", "--label-smoothing", "0.1"]


def _in_process(data, teacher, *extra):
    return utils.build_in_process([
        data, *utils.TINY_TRANSFORMER, "--task", "translation_kd", "--teacher-path", teacher,
        "--criterion", "word_kd", "--label-smoothing", "0.1", "--cpu", *extra,
    ])


def test_alpha_zero_equals_label_smoothed_cross_entropy(tiny_data, tiny_teacher):
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher, "--kd-alpha", "0")
    sample = utils.first_batch(task)
    baseline = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    torch.manual_seed(0)
    model.train()
    loss_kd, size_kd, log_kd = criterion(model, sample)
    torch.manual_seed(0)
    loss_ls, size_ls, log_ls = baseline(model, sample)
    assert loss_kd.item() == loss_ls.item()  # exactly
    assert size_kd == size_ls == sample["ntokens"]
    assert log_kd["nll_loss"].item() == log_ls["nll_loss"].item()
    assert log_kd["kd_loss"].item() > 0  # logged even when unweighted by alpha


@pytest.mark.parametrize("T_S,K", [(1.5, 5), (1.0, 0), (1.0, 5)])  # the last two take the fused path
def test_loss_matches_direct_computation(tiny_data, tiny_teacher, T_S, K):
    """(1-a)*LS + a*T^2*sum_t H(q_t, p_t) with top-K, temperatures, computed by hand."""
    alpha, T = 0.3, 2.0
    cfg, task, model, criterion = _in_process(
        tiny_data, tiny_teacher, "--kd-alpha", str(alpha), "--kd-temperature", str(T),
        "--kd-student-temperature", str(T_S), "--kd-topk", str(K), "--kd-t2-scaling",
    )
    sample = utils.first_batch(task)
    model.eval()
    assert criterion.fused_kd(model, sample) == (T_S == 1.0)
    loss, _, logs = criterion(model, sample)

    target = sample["target"]
    mask = target.ne(task.target_dictionary.pad())
    with torch.no_grad():
        z_S = model(**sample["net_input"])[0][mask]
        z_T = task.teacher.models[0](**sample["net_input"])[0][mask]
        q = F.softmax(z_T / T, dim=-1)
        if K:
            q_top, ids = q.topk(K, dim=-1)
            q_top = q_top / q_top.sum(-1, keepdim=True)
            kd = -(q_top * F.log_softmax(z_S / T_S, dim=-1).gather(-1, ids)).sum() * T * T
        else:
            kd = -(q * F.log_softmax(z_S / T_S, dim=-1)).sum() * T * T
        lprobs = F.log_softmax(z_S, dim=-1)
        nll = -lprobs.gather(-1, target[mask].unsqueeze(-1)).sum()
        eps = 0.1 / (lprobs.size(-1) - 1)
        ls = (1 - 0.1 - eps) * nll + eps * (-lprobs.sum())
        teacher_nll = -F.log_softmax(z_T, -1).gather(-1, target[mask].unsqueeze(-1)).sum()
    assert loss.item() == pytest.approx(((1 - alpha) * ls + alpha * kd).item(), rel=1e-5)
    assert logs["kd_loss"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert logs["teacher_nll"].item() == pytest.approx(teacher_nll.item(), rel=1e-5)
    assert logs["teacher_agree"] == int((z_S.argmax(-1) == z_T.argmax(-1)).sum())
    assert logs["kd_tokens"] == int(mask.sum()) == sample["ntokens"]


@pytest.mark.parametrize("extra", [[], ["--kd-topk", "4", "--kd-temperature", "3"]])
def test_fused_path_gives_the_unfused_loss_logs_and_gradients(tiny_data, tiny_teacher, extra):
    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher, "--kd-alpha", "0.6", *extra)
    sample = utils.first_batch(task)
    model.eval()
    results = []
    for fused in (True, False):
        criterion.fused_kd = lambda model, sample, fused=fused: fused
        model.zero_grad()
        loss, sample_size, logs = criterion(model, sample)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.item(), sample_size, logs, grads))
    (loss_f, size_f, logs_f, grads_f), (loss_u, size_u, logs_u, grads_u) = results
    assert loss_f == pytest.approx(loss_u, rel=1e-5) and size_f == size_u
    for key in ("nll_loss", "kd_loss", "teacher_nll"):
        assert float(logs_f[key]) == pytest.approx(float(logs_u[key]), rel=1e-5), key
    for key in ("kd_tokens", "teacher_agree", "ntokens", "nsentences"):
        assert logs_f[key] == logs_u[key], key
    # each parameter's gradient to 1e-4 of its norm, or to 1e-6 of the whole gradient's
    # for those that are zero in exact arithmetic (k_proj.bias: softmax is shift-invariant)
    total = torch.cat([g.flatten() for g in grads_u]).norm().item()
    for (name, _), g_f, g_u in zip(model.named_parameters(), grads_f, grads_u):
        utils.assert_close_by_norm(g_f, g_u, rtol=1e-4, atol=1e-6 * total, what=name)


def test_teacher_is_frozen_and_not_part_of_the_student(tiny_data, tiny_teacher):
    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher)
    teacher = task.teacher.models[0]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    student_params = {id(p) for p in model.parameters()} | {id(p) for p in criterion.parameters()}
    assert not student_params & {id(p) for p in teacher.parameters()}
    before = [p.clone() for p in teacher.parameters()]
    sample = utils.first_batch(task)
    model.train()
    loss, _, _ = criterion(model, sample)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_teacher_follows_student_dtype(tiny_data, tiny_teacher):
    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher)
    sample = utils.first_batch(task)
    model = model.to(torch.bfloat16)
    criterion(model, sample)
    assert next(task.teacher.models[0].parameters()).dtype == torch.bfloat16


def test_teacher_forward_equals_the_models_own_output(tiny_data, tiny_teacher):
    """The teacher applies its output layer to contiguous features (a faster product for a
    frozen projection): the same logits as model(**net_input)[0]."""
    from fairseq_kd.teacher import teacher_forward

    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher)
    sample = utils.first_batch(task)
    teacher = task.teacher.models[0]
    with torch.no_grad():
        want = teacher(**sample["net_input"])[0]
        got = teacher_forward(teacher, sample["net_input"])
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-5)


def test_half_precision_fused_path(tiny_data, tiny_teacher, tmp_path):
    """float16 student and teacher (fairseq-train --memory-efficient-fp16 runs them on a CPU;
    --fp16's optimizer needs CUDA): the fused loss in float32 over half logits, finite
    gradients, and training that lowers the loss."""
    cfg, task, model, criterion = _in_process(tiny_data, tiny_teacher, "--kd-alpha", "0.5")
    sample = utils.first_batch(task)
    model.eval()
    loss_32 = criterion(model, sample)[0].item()
    model = model.half()
    assert criterion.fused_kd(model, sample)
    loss_16, _, logs = criterion(model, sample)
    assert loss_16.dtype == torch.float32 and next(task.teacher.models[0].parameters()).dtype == torch.float16
    assert loss_16.item() == pytest.approx(loss_32, rel=2e-2)
    loss_16.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float16 and torch.isfinite(g).all() for g in grads)

    proc = utils.train(tiny_data, str(tmp_path / "student"), max_update=30,
                       criterion=[*KD_ARGS, "--kd-alpha", "0.5"],
                       extra=["--teacher-path", tiny_teacher, "--memory-efficient-fp16"])
    records = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "kd_loss" in r and "loss_scale" in r]
    assert len(records) >= 2 and all(math.isfinite(float(r["kd_loss"])) for r in records)
    assert float(records[-1]["loss"]) < float(records[0]["loss"])


def test_ensemble_averages_teacher_probabilities(tiny_data, tiny_teacher, tiny_teacher2):
    cfg, task, model, criterion = _in_process(tiny_data, f"{tiny_teacher}:{tiny_teacher2}")
    assert len(task.teacher) == 2
    sample = utils.first_batch(task)
    mask = sample["target"].ne(task.target_dictionary.pad())
    probs, ids, _ = task.teacher_soft_targets(sample, model, mask, temperature=3.0)
    with torch.no_grad():
        expected = sum(
            F.softmax(m(**sample["net_input"])[0][mask] / 3.0, dim=-1) for m in task.teacher.models
        ) / 2
    assert ids is None
    assert torch.allclose(probs, expected, atol=1e-6)
    single = F.softmax(task.teacher.models[0](**sample["net_input"])[0][mask] / 3.0, -1)
    assert not torch.allclose(probs, single, atol=1e-3)


def test_an_online_teacher_does_not_change_the_students_start(tiny_data, tiny_teacher, tmp_path):
    """With alpha 0 the word_kd student of an online teacher trains as the same seed's
    label-smoothed baseline does, through fairseq-train with a data worker: same initial
    weights, batches and loss, so the same weights after 5 updates. (Loading the teacher
    used to draw from the seeded generators before the student was built: other initial
    weights, as far apart as two seeds'.)"""
    from fairseq_kd import checkpoint

    weights = {}
    for name, criterion, extra in (
        ("baseline", ("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"), []),
        ("online", [*KD_ARGS, "--kd-alpha", "0"], ["--teacher-path", tiny_teacher]),
    ):
        save = str(tmp_path / name)
        utils.train(tiny_data, save, max_update=5, criterion=criterion, extra=[*extra, "--num-workers", "1"])
        weights[name] = checkpoint.load(os.path.join(save, "checkpoint_last.pt"))["model"]
    assert set(weights["online"]) == set(weights["baseline"])
    for key, want in weights["baseline"].items():
        utils.assert_close_by_norm(weights["online"][key], want, rtol=1e-5, atol=1e-7, what=key)


def test_end_to_end_train_and_generate(tiny_data, tiny_teacher, tmp_path):
    """Teacher -> word-KD student through fairseq-train -> fairseq-generate."""
    save = str(tmp_path / "student")
    proc = utils.train(
        tiny_data, save, max_update=40,
        criterion=[*KD_ARGS, "--kd-alpha", "0.5", "--kd-temperature", "2", "--kd-topk", "4"],
        extra=["--teacher-path", tiny_teacher],
    )
    records = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "kd_loss" in r]
    assert records, "kd_loss is not logged"
    last = records[-1]
    for key in ("kd_loss", "nll_loss", "teacher_agree", "teacher_nll"):
        assert math.isfinite(float(last[key])), key
    assert 0 <= float(last["teacher_agree"]) <= 100
    # The teacher is good on this task (trained 120 updates), the student is young.
    assert float(last["teacher_nll"]) < float(last["nll_loss"])

    # The student checkpoint holds the student only: no teacher weights.
    from fairseq_kd import checkpoint

    state = checkpoint.load(os.path.join(save, "checkpoint_last.pt"))
    teacher_state = checkpoint.load(tiny_teacher)
    assert set(state["model"]) == set(teacher_state["model"])  # same architecture, once

    hyps = utils.generate(tiny_data, os.path.join(save, "checkpoint_last.pt"))
    assert len(hyps) == 20


def test_missing_teacher_is_a_clear_error_and_writes_nothing(tiny_data, tmp_path):
    save = tmp_path / "student"
    proc = utils.train(
        tiny_data, str(save), criterion=KD_ARGS, check=False,
        extra=["--teacher-path", str(tmp_path / "nope.pt")],
    )
    utils.usage_error(proc, f"teacher checkpoint not found: {tmp_path / 'nope.pt'}")
    assert not save.exists() or not any(save.iterdir())


def test_dictionary_mismatch_names_sizes_and_first_symbol(tiny_data, tmp_path):
    """A teacher trained on another vocabulary is refused before any training."""
    text = utils.make_copy_task(str(tmp_path / "text"), vocab=14, seed=3)
    other = utils.preprocess(text, str(tmp_path / "bin"))
    utils.train(other, str(tmp_path / "other_teacher"), max_update=5)
    save = tmp_path / "student"
    proc = utils.train(
        tiny_data, str(save), criterion=KD_ARGS, check=False,
        extra=["--teacher-path", str(tmp_path / "other_teacher" / "checkpoint_last.pt")],
    )
    assert proc.returncode != 0
    from fairseq.data import Dictionary

    d_T = Dictionary.load(os.path.join(other, "dict.tgt.txt"))
    d_S = Dictionary.load(os.path.join(tiny_data, "dict.tgt.txt"))
    first = next(i for i in range(min(len(d_T), len(d_S))) if d_T[i] != d_S[i])
    assert f"teacher dictionary has {len(d_T)} symbols, student dictionary has {len(d_S)}" in proc.stderr
    assert f"first difference at index {first}: {d_T[first]!r} (teacher) vs {d_S[first]!r} (student)" in proc.stderr
    assert not save.exists() or not any(save.iterdir())


def test_word_kd_needs_a_kd_task(tiny_data, tmp_path):
    proc = utils.train(
        tiny_data, str(tmp_path / "s"), check=False,
        criterion=["--task", "translation", "--criterion", "word_kd"],
    )
    utils.usage_error(proc, "needs --task translation_kd")
