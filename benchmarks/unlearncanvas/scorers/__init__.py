"""The UnlearnCanvas scorers: judges (classifier, CLIP, FID features) and the per-cell Metrics they feed."""

from benchmarks.unlearncanvas.scorers.cells import CellAccuracy, CellMean, cell_index
from benchmarks.unlearncanvas.scorers.classifier import StyleObjectClassifier, UnlearnCanvasClassifier
from benchmarks.unlearncanvas.scorers.clip import ClipScorer
from benchmarks.unlearncanvas.scorers.fid import (
    CellFrechetDistance, ClipFeatures, FIDError, InceptionFeatures, frechet_distance, frechet_from_moments)

__all__ = ["CellAccuracy", "CellFrechetDistance", "CellMean", "ClipFeatures", "ClipScorer", "FIDError",
           "InceptionFeatures", "StyleObjectClassifier", "UnlearnCanvasClassifier", "cell_index",
           "frechet_distance", "frechet_from_moments"]
