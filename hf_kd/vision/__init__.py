"""The vision task: torchvision classifiers distilled under Accelerate on the shared KD core.

Holds the data (``data``: ImageFolder or the offline digits), the models, arguments and optimiser
(``setup``) and the training loop (``loop``: ``prepare``, ``backward``, ``gather_for_metrics``, ``save_state``).

May import: ``hf_kd.core`` and ``hf_kd.vision``. Never ``hf_kd.text`` or ``hf_kd.reproduce``.
"""
