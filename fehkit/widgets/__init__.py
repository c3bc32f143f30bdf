"""ipywidgets apps that wire fehkit's plots to its core calls; no science lives here."""

from fehkit.widgets._bokeh import ensure_bokehjs
from fehkit.widgets.cog_explorer import CurveOfGrowthExplorer
from fehkit.widgets.continuum_explorer import ContinuumExplorer
from fehkit.widgets.feh_explorer import FeHExplorer
from fehkit.widgets.fusion_explorer import FusionExplorer
from fehkit.widgets.line_inspector import LineInspector
from fehkit.widgets.spectrum_viewer import SpectrumViewer
from fehkit.widgets.training_dashboard import TrainingDashboard
from fehkit.widgets.validation_dashboard import ValidationDashboard

__all__ = [
    "ContinuumExplorer",
    "CurveOfGrowthExplorer",
    "FeHExplorer",
    "FusionExplorer",
    "LineInspector",
    "SpectrumViewer",
    "TrainingDashboard",
    "ValidationDashboard",
    "ensure_bokehjs",
]
