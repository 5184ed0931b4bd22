"""The pipeline a user runs: evaluation, label-free selection, reports and heatmap figures."""

__all__: list[str] = []
