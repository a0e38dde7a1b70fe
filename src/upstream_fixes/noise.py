"""The one place where upstream messages that are harmless and that vitlab cannot avoid are silenced, each with
the reason. Warnings that vitlab's own code causes are fixed at their cause instead."""

import logging
import warnings

# Lightning logs its tips and notices through this logger (rank_zero_info)
_LIGHTNING_INFO = logging.getLogger("lightning.pytorch.utilities.rank_zero")


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def silence_upstream_noise() -> None:
    # Lightning 2.6 advertises its litlogger service on every Trainer built without it (logger_connector.py)
    _LIGHTNING_INFO.addFilter(_DropMessages("💡 Tip:"))
    # Lightning 2.6.6's own utilities/_pytree.py uses torch.utils._pytree.LeafSpec, deprecated in torch 2.14:
    # a FutureWarning at every fit that only a Lightning release can fix
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
