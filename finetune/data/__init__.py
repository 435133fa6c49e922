"""The data path: recipe ``data:`` section -> tokenized datasets with loss masks."""

from finetune.data.prepare import PreparedData, prepare_data

__all__ = ["PreparedData", "prepare_data"]
