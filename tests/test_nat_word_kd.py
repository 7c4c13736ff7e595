"""--criterion nat_word_kd (criterions/nat_word_kd.py) and --task translation_lev_kd
(tasks/translation_lev_kd.py): teacher input and alignment, the KD term's
golden value, alpha = 0 equals nat_loss, and CMLM / LevT students trained with
KD from an autoregressive teacher through fairseq-train, decoded by
fairseq-generate."""
import math

import pytest
import torch
import utils
from fairseq.data import Dictionary

# fairseq's Dictionary: <s> = 0, <pad> = 1, </s> = 2, <unk> = 3
BOS, PAD, EOS, UNK = 0, 1, 2, 3


# ---------------------------------------------------------------- task
def test_teacher_net_input_drops_bos_and_moves_eos_to_the_front():
    from fairseq_kd.tasks.translation_lev_kd import teacher_net_input

    sample = {
        "net_input": {
            # left-padded sources with <s> prepended (translation_lev's prepend_bos=True)
            "src_tokens": torch.tensor([[PAD, BOS, 5, 6, EOS], [BOS, 7, 8, 9, EOS]]),
            "src_lengths": torch.tensor([4, 5]),
        },
        "target": torch.tensor([[BOS, 10, 11, EOS, PAD], [BOS, 12, EOS, PAD, PAD]]),
    }
    net_input = teacher_net_input(sample, BOS, EOS, PAD)
    assert net_input["src_tokens"].tolist() == [[PAD, 5, 6, EOS], [7, 8, 9, EOS]]
    assert net_input["src_lengths"].tolist() == [3, 4]
    assert net_input["prev_output_tokens"].tolist() == [[EOS, 10, 11, PAD], [EOS, 12, PAD, PAD]]

    # right-padded sources (--left-pad-source False) keep their padding side
    sample["net_input"]["src_tokens"] = torch.tensor([[BOS, 5, 6, EOS, PAD], [BOS, 7, 8, 9, EOS]])
    assert teacher_net_input(sample, BOS, EOS, PAD)["src_tokens"].tolist() == [[5, 6, EOS, PAD], [7, 8, 9, EOS]]

    sample["target"] = torch.tensor([[10, 11, EOS]] * 2)  # no <s>: not a translation_lev batch
    with pytest.raises(ValueError, match="start with <s>"):
        teacher_net_input(sample, BOS, EOS, PAD)


class _RecordingTeacher:
    """Stands in for TeacherEnsemble: logits peaked on word 4 + t at teacher step t."""

    def __init__(self, vocab):
        self.vocab, self.net_input = vocab, None

    def follow(self, device, dtype):
        pass

    def logits(self, net_input):
        self.net_input = net_input
        bsz, steps = net_input["prev_output_tokens"].shape
        z = torch.zeros(bsz, steps, self.vocab)
        for t in range(steps):
            z[:, t, 4 + t] = 20.0
        return [z]


def _lev_kd_task(vocab=12):
    from fairseq_kd.tasks.translation_lev_kd import TranslationLevKDConfig, TranslationLevKDTask

    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    return TranslationLevKDTask(TranslationLevKDConfig(), d, d), d


def test_nat_position_j_reads_the_teachers_step_j_minus_1():
    task, d = _lev_kd_task()
    task.teacher = _RecordingTeacher(len(d))
    sample = {
        "net_input": {"src_tokens": torch.tensor([[BOS, 5, 6, EOS]]), "src_lengths": torch.tensor([4])},
        "target": torch.tensor([[BOS, 5, 6, 7, EOS]]),
    }
    mask = torch.tensor([[False, True, False, True, True]])  # NAT positions 1, 3, 4
    model = torch.nn.Linear(1, 1)
    probs_T, ids_T, teacher_nll = task.teacher_soft_targets(sample, model, mask)
    assert ids_T is None and probs_T.shape == (3, len(d))
    # teacher step t is peaked on word 4 + t: positions 1, 3, 4 <- steps 0, 2, 3
    assert probs_T.argmax(-1).tolist() == [4, 6, 7]
    assert task.teacher.net_input["prev_output_tokens"].tolist() == [[EOS, 5, 6, 7]]
    # gold words 5, 7, EOS: the teacher puts ~1 on 4, 6, 7 so the first two are
    # near-impossible and the third (EOS vs 7) too: each -log q = 20 + log(1 + (V-1)e^-20)
    expected = 3 * (20.0 + math.log1p((len(d) - 1) * math.exp(-20.0)))
    assert teacher_nll.item() == pytest.approx(expected, rel=1e-5)

    with pytest.raises(ValueError, match="<s>"):
        task.teacher_soft_targets(sample, model, torch.ones_like(mask))


# ---------------------------------------------------------------- criterion
def _stub_task(probs_T):
    """A translation_lev_kd task (what NatWordKDCriterion needs) with a fixed teacher distribution."""
    from fairseq_kd.tasks._kd_teacher import SoftTargets
    from fairseq_kd.tasks.translation_lev_kd import TranslationLevKDConfig, TranslationLevKDTask

    class _StubTask(TranslationLevKDTask):
        def teacher_soft_targets(self, sample, model, mask, temperature=1.0, topk=0):
            self.mask = mask
            return SoftTargets(self.probs_T, None, None)

    d = Dictionary()
    task = _StubTask(TranslationLevKDConfig(), d, d)
    task.teacher, task.probs_T, task.mask = object(), probs_T, None
    return task


def test_kd_term_golden_value_on_a_hand_built_batch():
    from fairseq_kd.criterions.nat_word_kd import NatWordKDCriterion

    # teacher q at the two KD positions
    probs_T = torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]])
    task = _stub_task(probs_T)
    criterion = NatWordKDCriterion(task, label_smoothing=0.0, kd_alpha=0.5)
    log2, log3 = math.log(2), math.log(3)
    out = torch.tensor([[
        [9.0, 9.0, 9.0],  # <s>: masked by the model, but no teacher there: dropped
        [0.0, 0.0, log2],  # p = 1/4, 1/4, 1/2
        [5.0, 0.0, 0.0],  # not masked
        [log3, 0.0, 0.0],  # p = 3/5, 1/5, 1/5
    ]])
    word_ins = {"out": out, "mask": torch.tensor([[True, True, False, True]])}
    sample = {"target": torch.tensor([[BOS, 5, 6, EOS]])}
    kd = criterion.compute_kd(None, word_ins, sample)
    # position 1: -(0.5 ln 1/4 + 0.25 ln 1/4 + 0.25 ln 1/2) = 1.75 ln 2 = 1.2130076
    # position 3: -ln 1/5 = ln 5 = 1.6094379;  mean = 1.4112228
    assert kd.item() == pytest.approx(1.4112228, abs=1e-6)
    assert task.mask.tolist() == [[False, True, False, True]]

    # a student whose output is not in the target frame is refused
    with pytest.raises(ValueError, match="output frame"):
        criterion.compute_kd(None, {"out": out[:, :3], "mask": None}, sample)


def _build(nat_data, arch, noise, alpha, task="translation_lev_kd", teacher=True):
    argv = [
        nat_data["distilled"], "--task", task, "--noise", noise,
        "--arch", arch, *utils.TINY_NAT_SIZES,
        "--criterion", "nat_word_kd", "--label-smoothing", "0.1", "--kd-alpha", str(alpha),
        "--optimizer", "adam", "--lr", "0.001", "--cpu", "--max-tokens", "400", "--seed", "1",
    ]
    if teacher:
        argv += ["--teacher-path", nat_data["teacher"]]
    return utils.build_in_process(argv)


@pytest.mark.parametrize("arch,noise", [("cmlm_kd_iwslt_de_en", "random_mask"), ("levt_kd_iwslt_de_en", "random_delete")])
def test_alpha_0_is_nat_loss_and_alpha_1_replaces_word_ins_by_kd(nat_data, arch, noise):
    from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion

    _, task, model, criterion = _build(nat_data, arch, noise, alpha=0.0)
    torch.manual_seed(3)
    sample = utils.first_batch(task)
    sample["prev_target"] = task.inject_noise(sample["target"])
    model.eval()  # no dropout: the same batch gives the same outputs
    nat_loss = LabelSmoothedDualImitationCriterion(task, label_smoothing=0.1)
    with torch.no_grad():
        loss_0, size_0, logs_0 = criterion(model, sample)
        loss_nat, size_nat, logs_nat = nat_loss(model, sample)
        criterion.kd_alpha = 1.0
        loss_1, _, logs_1 = criterion(model, sample)
    assert size_0 == size_nat == 1
    assert torch.equal(loss_0, loss_nat)
    for key, value in logs_nat.items():
        if key.endswith("-loss"):
            assert logs_0[key] == value  # every nat_loss term, logged unweighted
    assert "kd-loss" not in logs_0  # alpha 0: the teacher is not run
    kd = logs_1["kd-loss"]
    assert math.isfinite(kd) and kd > 0
    # alpha = 1: the word_ins term (factor 1) is replaced by KD, the others stay
    assert loss_1.item() == pytest.approx(loss_nat.item() - logs_nat["word_ins-loss"] + kd, rel=1e-5)


def test_nat_word_kd_needs_the_kd_task_and_a_teacher(nat_data):
    with pytest.raises(ValueError, match="translation_lev_kd"):
        _build(nat_data, "cmlm_kd_iwslt_de_en", "random_mask", 0.5, task="translation_lev", teacher=False)
    with pytest.raises(ValueError, match="--teacher-path"):
        _build(nat_data, "cmlm_kd_iwslt_de_en", "random_mask", 0.5, teacher=False)


@pytest.mark.parametrize("arch,noise", [("cmlm_kd_iwslt_de_en", "random_mask"), ("levt_kd_iwslt_de_en", "random_delete")])
def test_student_trains_with_kd_from_the_ar_teacher_and_decodes(nat_data, tmp_path, arch, noise):
    save = str(tmp_path / arch)
    proc = utils.train(
        nat_data["distilled"], save, max_update=30,
        arch=["--arch", arch, *utils.TINY_NAT_SIZES],
        criterion=["--criterion", "nat_word_kd", "--label-smoothing", "0.1", "--kd-alpha", "0.5"],
        extra=["--task", "translation_lev_kd", "--noise", noise, "--teacher-path", nat_data["teacher"]],
    )
    logs = [r for r in utils.json_logs(proc.stdout + proc.stderr) if "kd" in r]
    assert len(logs) >= 2, "kd-loss was not logged"
    kd = [float(r["kd"]) for r in logs]
    assert all(math.isfinite(v) for v in kd) and kd[-1] < kd[0]
    hyps = utils.generate(
        nat_data["distilled"], f"{save}/checkpoint_last.pt",
        extra=["--task", "translation_lev", "--iter-decode-max-iter", "4", "--iter-decode-with-beam", "1"],
    )
    assert len(hyps) == 20  # one hypothesis per test sentence
