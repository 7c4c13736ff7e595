"""``--criterion logit_mse``: distilling a classifier's logits (Tang et al. 2019).

Tang, Lu, Liu, Mou, Vechtomova, Lin (2019), Distilling Task-Specific Knowledge
from BERT into Simple Neural Networks, eq. 2:

    loss_n = (1 - kd_alpha) * CE(z_S,n, y_n) + kd_alpha * ||z_T,n - z_S,n||_2^2
    loss_n = ||z_T,n - z_S,n||_2^2            when example n has no gold label (y_n = -1)

summed over the batch, ``sample_size`` = number of examples. ``--kd-alpha``
weighs the distillation term, as in every criterion of this plugin; the
paper's alpha weighs the gold term instead: kd_alpha = 1 - alpha. kd_alpha = 1
(the default, the paper's alpha = 0) is its BiLSTM_SOFT; kd_alpha = 0 is plain
cross-entropy.
Teacher logits come from the task (``--task sentence_prediction_kd
--teacher-logits DIR``) as ``sample["teacher_logits"]``; a batch without them
(validation) is scored on the cross-entropy of its gold labels alone.

Logged per example, in nats (not base 2: the MSE is not a log-likelihood):
``loss``; ``ce_loss`` over labelled examples; ``mse_loss`` over examples with
teacher logits; ``accuracy`` over labelled examples; ``teacher_agree``, the
percentage of examples whose student argmax is the teacher's.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from .. import losses
from ..errors import UsageError
from ._common import check_weight, sum_logs


@dataclass
class LogitMSECriterionConfig(FairseqDataclass):
    classification_head_name: str = field(
        default="sentence_classification_head",
        metadata={"help": "name of the model's classification head (as sentence_prediction)"},
    )
    regression_target: bool = field(
        default=False,
        metadata={"help": "must stay False: logit_mse is for classification (read by the task)"},
    )
    kd_alpha: float = field(
        default=1.0,
        metadata={
            "help": "weight of the distillation term: (1-kd_alpha)*CE(gold) + kd_alpha*||z_T - z_S||^2; "
            "1 = BiLSTM_SOFT, 0 = plain cross-entropy (Tang et al. 2019's alpha is 1 - kd_alpha); "
            "unlabelled examples use the MSE only"
        },
    )


@register_criterion("logit_mse", dataclass=LogitMSECriterionConfig)
class LogitMSECriterion(FairseqCriterion):
    def __init__(self, task, classification_head_name="sentence_classification_head", regression_target=False,
                 kd_alpha=1.0):
        super().__init__(task)
        if regression_target:
            raise UsageError("--criterion logit_mse is for classification; drop --regression-target")
        check_weight("--kd-alpha", kd_alpha)
        self.classification_head_name = classification_head_name
        self.kd_alpha = kd_alpha

    def forward(self, model, sample, reduce=True):
        logits_S, _ = model(
            **sample["net_input"], features_only=True, classification_head_name=self.classification_head_name
        )  # B x C
        B = logits_S.size(0)
        target = sample.get("target")
        target = target.view(-1) if target is not None else logits_S.new_full((B,), -1, dtype=torch.long)
        labelled = target >= 0
        logits_T = sample.get("teacher_logits")  # B x C or None
        if logits_T is None:
            if model.training and self.kd_alpha > 0.0:
                raise UsageError(
                    "training batch without teacher logits: pass --teacher-logits DIR for the "
                    "training split (--task sentence_prediction_kd), or use --kd-alpha 0"
                )
            if not bool(labelled.all()):
                raise ValueError(f"{int((~labelled).sum())} examples have neither a gold label nor teacher logits")
            ce = F.cross_entropy(logits_S.float(), target, reduction="none")  # B
            loss, mse = ce, None
        else:
            if logits_T.shape != logits_S.shape:
                raise ValueError(f"teacher logits are {tuple(logits_T.shape)}, student logits {tuple(logits_S.shape)}")
            # losses.logit_mse_objective follows the paper: its alpha weighs the gold term
            loss, ce, mse = losses.logit_mse_objective(
                logits_S, logits_T.to(logits_S.device), target, 1.0 - self.kd_alpha
            )
        loss = loss.sum() if reduce else loss
        preds = logits_S.argmax(-1)
        logging_output = {
            "loss": loss.data,
            "ce_loss": ce.sum().data,
            "nlabelled": int(labelled.sum()),
            "ncorrect": int((preds.eq(target) & labelled).sum()),
            "ntokens": sample["ntokens"],
            "nsentences": B,
            "sample_size": B,
        }
        if mse is not None:
            logging_output["mse_loss"] = mse.sum().data
            logging_output["nteacher"] = B
            logging_output["teacher_agree"] = int(preds.eq(logits_T.argmax(-1).to(preds.device)).sum())
        return loss, B, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum_logs(logging_outputs, key)

        sample_size = total("sample_size")
        if sample_size:
            metrics.log_scalar("loss", total("loss") / sample_size, sample_size, round=4)
        nlabelled = total("nlabelled")
        if nlabelled:
            metrics.log_scalar("ce_loss", total("ce_loss") / nlabelled, nlabelled, round=4)
            metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / nlabelled, nlabelled, round=2)
        nteacher = total("nteacher")
        if nteacher:
            metrics.log_scalar("mse_loss", total("mse_loss") / nteacher, nteacher, round=4)
            metrics.log_scalar("teacher_agree", 100.0 * total("teacher_agree") / nteacher, nteacher, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
