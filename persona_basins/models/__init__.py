"""Build and load Hugging Face causal LMs (the organism and any hub model) and PEFT adapters."""

import os as _os

# Quiet the libraries' own chatter (shard-writing bars, padding hints): our commands print their own.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
try:  # pragma: no cover - depends on the installed version
    from transformers.utils import logging as _tlog

    _tlog.set_verbosity_error()
    _tlog.disable_progress_bar()
except Exception:  # noqa: BLE001
    pass
