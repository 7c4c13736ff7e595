"""--criterion logit_mse and losses.logit_mse_objective (Tang et al. 2019, eq. 2)."""
import math

import pytest
import torch
import torch.nn.functional as F

import utils
from fairseq_kd import losses
from fairseq_kd.criterions.logit_mse import LogitMSECriterion


# ------------------------------------------------------------ pure function
def test_objective_golden_values():
    z_S = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    z_T = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([1, -1])  # the second example has no gold label
    loss, ce, mse = losses.logit_mse_objective(z_S, z_T, target, alpha=0.5)
    ce0 = math.log(1 + math.exp(-1.0))  # -log softmax([1, 2])[1]
    assert mse.tolist() == pytest.approx([1 + 4, 1 + 1])
    assert ce.tolist() == pytest.approx([ce0, 0.0])
    assert loss.tolist() == pytest.approx([0.5 * ce0 + 0.5 * 5, 2.0])  # unlabelled: MSE only


def test_objective_alpha_limits():
    torch.manual_seed(0)
    z_S, z_T = torch.randn(6, 3), torch.randn(6, 3)
    target = torch.tensor([0, 2, 1, -1, 1, -1])
    labelled = target >= 0
    mse = ((z_T - z_S) ** 2).sum(-1)
    # alpha = 0 (BiLSTM_SOFT): pure MSE for every example
    assert torch.allclose(losses.logit_mse_objective(z_S, z_T, target, 0.0)[0], mse)
    # alpha = 1: plain cross-entropy on labelled examples, MSE on the others
    loss1 = losses.logit_mse_objective(z_S, z_T, target, 1.0)[0]
    ce = F.cross_entropy(z_S[labelled], target[labelled], reduction="none")
    assert torch.allclose(loss1[labelled], ce)
    assert torch.allclose(loss1[~labelled], mse[~labelled])
    # a student equal to its teacher has zero distillation loss
    assert losses.logit_mse_objective(z_T, z_T, target, 0.0)[0].abs().max() == 0


# ---------------------------------------------------------------- criterion
class FixedLogits(torch.nn.Module):
    """A stand-in model with the RoBERTa classification interface."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, src_tokens, src_lengths=None, features_only=False, classification_head_name=None):
        assert features_only and classification_head_name == "sentence_classification_head"
        return self.logits, {}


def batch(target, teacher=None):
    sample = {"net_input": {"src_tokens": torch.zeros(len(target), 3, dtype=torch.long)},
              "target": torch.tensor(target).view(-1, 1), "ntokens": 3 * len(target)}
    if teacher is not None:
        sample["teacher_logits"] = teacher
    return sample


def test_criterion_sums_the_objective_and_logs_each_term():
    z_S = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    z_T = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    model = FixedLogits(z_S).train()
    criterion = LogitMSECriterion(None, kd_alpha=0.75)
    loss, sample_size, log = criterion(model, batch([1, -1, 0], z_T))
    expected, ce, mse = losses.logit_mse_objective(z_S, z_T, torch.tensor([1, -1, 0]), 0.25)
    assert loss.item() == pytest.approx(expected.sum().item())
    assert sample_size == 3 and log["nsentences"] == 3
    assert log["nlabelled"] == 2 and log["nteacher"] == 3
    assert log["ce_loss"].item() == pytest.approx(ce.sum().item())
    assert log["mse_loss"].item() == pytest.approx(mse.sum().item())
    assert log["ncorrect"] == 2  # argmax 1 (gold 1) and argmax 0 (gold 0)
    assert log["teacher_agree"] == 2  # student argmaxes 1, 0, 0 vs teacher 0, 0, 0 (ties: first)
    loss.backward()  # d/dz_S of sum_n loss_n reaches the student
    assert model.logits.grad is not None and model.logits.grad.abs().sum() > 0


def test_reduce_metrics_per_example():
    from fairseq.logging import metrics

    logs = [
        {"loss": 6.0, "ce_loss": 1.0, "mse_loss": 6.0, "nlabelled": 2, "ncorrect": 1, "nteacher": 3,
         "teacher_agree": 3, "sample_size": 3, "nsentences": 3, "ntokens": 9},
        {"loss": 2.0, "ce_loss": 3.0, "nlabelled": 2, "ncorrect": 2, "sample_size": 1, "nsentences": 1,
         "ntokens": 3},
    ]
    with metrics.aggregate(new_root=True) as agg:  # only this aggregator: not the process-wide default
        LogitMSECriterion.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(8.0 / 4)
    assert values["ce_loss"] == pytest.approx(4.0 / 4)
    assert values["accuracy"] == pytest.approx(75.0)
    assert values["mse_loss"] == pytest.approx(2.0)
    assert values["teacher_agree"] == pytest.approx(100.0)


def test_without_teacher_logits_validation_uses_gold_cross_entropy():
    z_S = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    model = FixedLogits(z_S).eval()
    loss, _, log = LogitMSECriterion(None)(model, batch([1, 1]))
    assert loss.item() == pytest.approx(F.cross_entropy(z_S, torch.tensor([1, 1]), reduction="sum").item())
    assert "mse_loss" not in log and log["ncorrect"] == 1


def test_refuses_training_without_teacher_logits_and_bad_options():
    model = FixedLogits(torch.zeros(2, 2)).train()
    with pytest.raises(ValueError, match="--teacher-logits"):
        LogitMSECriterion(None, kd_alpha=1.0)(model, batch([0, 1]))
    # kd_alpha = 0 (the paper's alpha = 1) needs no teacher: the BiLSTM baseline
    LogitMSECriterion(None, kd_alpha=0.0)(model, batch([0, 1]))
    with pytest.raises(ValueError, match="neither a gold label nor teacher logits"):
        LogitMSECriterion(None, kd_alpha=0.0)(model, batch([0, -1]))
    with pytest.raises(ValueError, match="--kd-alpha"):
        LogitMSECriterion(None, kd_alpha=1.5)
    with pytest.raises(ValueError, match="regression"):
        LogitMSECriterion(None, regression_target=True)


def test_registered_and_parsed_by_fairseq(tmp_path):
    """--criterion logit_mse --kd-alpha reaches the criterion through fairseq's parser."""
    data = utils.preprocess_classification(utils.make_classification_task(str(tmp_path / "text"), n_train=20,
                                                                          n_valid=5), str(tmp_path / "bin"))
    _, task, model, criterion = utils.build_in_process([
        data, "--task", "sentence_prediction", "--num-classes", "2", *utils.TINY_BILSTM,
        "--criterion", "logit_mse", "--kd-alpha", "0.7",
    ])
    assert isinstance(criterion, LogitMSECriterion) and criterion.kd_alpha == 0.7
    assert "sentence_classification_head" in model.classification_heads
