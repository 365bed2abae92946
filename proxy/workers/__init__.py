"""``[proxy] workers``: several processes serving clients on one port, one brain deciding.

``run`` starts Baton as the config says: with one worker, exactly the single-process
``app.run``; with more, the brain (``brain.py``) and its workers (``worker.py``), which talk over
a local channel (``channel.py``, messages in ``messages.py``). See README "Workers".
"""

from __future__ import annotations


def run(config_path: str) -> None:
    from ..config import load_config

    config = load_config(config_path)
    if config.proxy.worker_count == 1:
        from ..app import run as run_one

        run_one(config_path)
    else:
        from .brain import run as run_brain

        run_brain(config_path)
