"""ipywidgets apps that wire fehkit's plots to its core calls; no science lives here."""

from fehkit.widgets.continuum_explorer import ContinuumExplorer
from fehkit.widgets.feh_explorer import FeHExplorer
from fehkit.widgets.line_inspector import LineInspector
from fehkit.widgets.spectrum_viewer import SpectrumViewer

__all__ = ["ContinuumExplorer", "FeHExplorer", "LineInspector", "SpectrumViewer"]
