"""Supervised only: no `trainer.unsupervised` section (or `sup_only_epoch >= epochs`). The trainer's supervised step
(`engine/steps.py` SupervisedStep) is the whole method; nothing is added."""
from .base import Method


class Supervised(Method):
    title = "supervised only"
