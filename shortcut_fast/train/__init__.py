"""Training: the one step every training loop runs (``step.py``) and the Trainer around it (``trainer.py``)."""
