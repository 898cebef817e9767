"""The mean teacher of U2PL without prototypes (no `net.proto_head`): after the supervised warm-up, the teacher's
pseudo-labels on the weak view supervise the student on CutMix-ed unlabeled images (entropy dropping or a
confidence threshold), and the teacher follows the student by EMA. The compiled step is `train/steps.py`
(`SemiStep`, `TeacherPseudoLabels`); the trainer draws the CutMix boxes and the EMA decay."""
from ..engine.steps import SemiStep, TeacherPseudoLabels
from .base import Method, step_graphs


class MeanTeacher(Method):
    title = "mean teacher (U2PL)"
    semi = True

    def graphs(self, pair, optimizer, criterion, ema, sums):
        plan = self.plan
        graphs = step_graphs("semi step", lambda **kw: SemiStep(
            pair, optimizer, criterion, plan.losses, ema, self.proto_head, sums["grads"], sums["stats"], **kw),
            plan.accumulation)
        graphs["teacher pseudo-labels"] = TeacherPseudoLabels(pair.teacher)
        return graphs
