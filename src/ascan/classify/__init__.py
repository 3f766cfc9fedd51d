"""Image classification, ``ascan classify <verb>``: train, eval, predict, export, finetune (short forms ``ascan train``,
``ascan eval``, ``ascan finetune``).

Rooms: :mod:`~ascan.classify.config` (typed settings, every default), :mod:`~ascan.classify.data` (what a run's
data was), :mod:`~ascan.classify.model` (built by the one factory, read back by the one run reader),
:mod:`~ascan.classify.task` (the engine task; ``eval``), :mod:`~ascan.classify.train` (training, fine-tuning),
:mod:`~ascan.classify.predict` (top-k CSV + contact sheet), :mod:`~ascan.classify.cli` (parsing only).
"""
