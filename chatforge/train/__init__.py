"""Training: the tokenizer, the model, the chat format, pretraining, supervised fine-tuning and the reward model."""
