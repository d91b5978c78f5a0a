"""The insides of train.py (general distillation): its flags, the data format, masking, losses, models, the
checkpoint, the metrics log and the held-out evaluation. Imports core/ and utils.py only."""
