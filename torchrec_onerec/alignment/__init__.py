"""Iterative preference alignment with DPO (docs/METHOD.md section 4): ``config`` (the ``align`` section), ``dpo``
(the loss), ``pairs`` (beam-searched candidates scored by a reward function -> chosen/rejected pairs),
``train_step`` (the DMP-trained module and its batch), ``trainer`` (one iteration of training on TorchRec) and
``ipa`` (``align_iteratively``: the loop, its log, checkpoints and resume). Import from the submodules; this
package stays import-light because ``torchrec_onerec.config`` reads ``alignment.config``."""
