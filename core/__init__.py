"""What every command stands on: errors reported in one line, files written whole, models and tokenizers
loaded with errors a user can act on, the precision decision, the replacement of a run folder, the teacher's
loader. Nothing here imports from training/ or tasks/."""
