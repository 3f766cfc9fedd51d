"""Training, evaluation and fine-tuning (``ascan train`` / ``ascan eval`` / ``ascan finetune``)."""
