"""Every Caffe Python layer of this project and the dataclass its ``param_str`` is parsed into.

The generator checks each rendered Python layer against this table with the very parser and
dataclass the layer uses at run time (``rmnet.config.parse_config``), so a bad key in a variant's
``data`` or ``losses`` section is refused when the nets are rendered, naming the layer, instead
of aborting Caffe later. A Python layer that is not in the table is not this project's.
"""
from __future__ import annotations

from layers.classify import ClassDataConfig
from layers.config import AMSoftmaxConfig, LocalStructureConfig
from layers.data import DataConfig, FeedbackConfig
from layers.dropout import ScheduledDropoutConfig

PARAM_CONFIGS: dict[tuple[str, str], type] = {
    ("layers.data", "MarketDataLayer"): DataConfig,
    ("layers.data", "HardSampleFeedbackLayer"): FeedbackConfig,
    ("layers.losses", "AMSoftmaxLossLayer"): AMSoftmaxConfig,
    ("layers.losses", "LocalStructureLossLayer"): LocalStructureConfig,
    ("layers.dropout", "ScheduledDropoutLayer"): ScheduledDropoutConfig,
    ("layers.classify", "ClassificationDataLayer"): ClassDataConfig,
}


def config_class(module: str, layer: str) -> type | None:
    """The param_str dataclass of a project layer, or None if it is not one."""
    return PARAM_CONFIGS.get((module, layer))
