"""ipywidgets apps that wire fehkit's plots to its core calls; no science lives here."""

from fehkit.widgets.spectrum_viewer import SpectrumViewer

__all__ = ["SpectrumViewer"]
