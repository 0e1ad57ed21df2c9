"""Neural-collapse measurement inside other training frameworks, each behind an optional extra:
:mod:`ncutils.integrations.torchmetrics` (``ncutils[torchmetrics]``: a ``torchmetrics.Metric``) and
:mod:`ncutils.integrations.lightning` (``ncutils[lightning]``: a PyTorch Lightning ``Callback``)."""
