"""Training-only code, apart from the runtime: bone segmentation training and its folder data
(``segment``, ``segment_data``), ACL classifier training (``acl``), its dataset readers and splits
(``acl_data``) and its evaluation figures and plots (``acl_metrics``).

Nothing under ``mskai.segment`` or ``mskai.acl`` imports this package when it is loaded; the commands that train
or evaluate import it inside their functions, so `mskai` starts (and classifies, segments) without it.
"""
