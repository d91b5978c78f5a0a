"""The task side: GLUE and your own tasks (scripts/run_glue.py), task distillation, and question answering
with distillation (scripts/run_qa.py). Imports core/, training/'s losses and models, and utils.py."""
