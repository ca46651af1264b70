"""Scorers: how a response is judged (math answers, code tests, exact text, the built-in task)."""

from t3d.dllm.scoring.base import Reference, Scorer, Verdict
from t3d.dllm.scoring.math_answers import ExactScorer, MathScorer

__all__ = ["ExactScorer", "MathScorer", "Reference", "Scorer", "Verdict"]
