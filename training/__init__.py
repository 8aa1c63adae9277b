"""Training side: demo tasks and tokenizer, backbone pre-training, MTP head training and evaluation."""
